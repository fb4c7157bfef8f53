"""A token batch's forward without a backward: its own loss and per-token logprobs, nothing changed.

The Tinker API's `forward` (server/tinker_api/training.py): the batch's chosen token loss is
checked as ComputeGradients checks it, the run's adapter computes the logits in eval mode at its
version (Evaluate's forward), and the loss and the targets' log-probabilities come from them.
"""

from __future__ import annotations

import torch

from gradserve.types import BatchLoss

from ..models.losses import forward_loss, prepare
from .served_run import ServedRun


def token_forward(
    served: ServedRun, inputs: torch.Tensor, targets: torch.Tensor, choice: BatchLoss
) -> tuple[float, torch.Tensor | None]:
    """(the batch's loss, its targets' log-probabilities [B, T]) from one eval forward."""
    _, function = prepare(served.store.model, inputs, targets, choice)
    result = served.store.evaluate(inputs, targets, return_predictions=True)
    assert result.predictions is not None  # asked for
    return forward_loss(function, result.predictions, targets)
