"""A token batch's own loss: BatchLoss with the per-token tensors of the RL losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradserve.types import BatchLoss


@dataclass(frozen=True)
class TokenBatchLoss(BatchLoss):
    """BatchLoss plus the sampler's per-token `logprobs` and the `advantages`, float32 [B, T]
    (importance_sampling, ppo), and the batch's `attention_mask` [B, T]. Per-token weights
    travel as `sample_weights` [B, T]."""

    logprobs: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
