"""StoreState: everything a checkpoint holds of a ParameterStore, as plain torch and Python."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class StoreState:
    version: int
    accumulated_batches: int
    accumulated_samples: int
    parameters: dict[str, torch.Tensor]
    # Only the parameters whose .grad is set.
    gradients: dict[str, torch.Tensor]
    # The optimizer's state_dict (tensors and plain values).
    optimizer: dict[str, Any]
    # The request-id windows, each oldest first: (method, request_id, result, fingerprint);
    # result None: dropped for the byte budget; fingerprint "": not known (older checkpoints).
    request_ids: tuple[tuple[str, str, Any, str], ...]
    # The model's buffers (batch norm's running statistics) by name; empty in checkpoints
    # written before they were saved, which leave the model's own buffers as they are.
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
