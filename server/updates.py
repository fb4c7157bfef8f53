"""The update step's pieces: the learning-rate check, the MEAN reduction, the gradient norm."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gradserve.errors import InvalidArgumentError


def check_learning_rate(learning_rate: float) -> None:
    if not math.isfinite(learning_rate) or learning_rate < 0:
        raise InvalidArgumentError(
            f"learning_rate: {learning_rate}, expected a finite number >= 0",
            field="learning_rate",
        )


def divide_gradients(parameters: Sequence[torch.nn.Parameter], batches: int) -> None:
    """MEAN: the accumulated sum over `batches` batches divided by their number."""
    if batches > 1:
        with torch.no_grad():
            for parameter in parameters:
                if parameter.grad is not None:
                    parameter.grad /= batches


def total_norm(parameters: Sequence[torch.nn.Parameter]) -> float:
    # Each gradient's norm reduced in float64 (one op each, no float64 copy), then combined.
    norms = [
        torch.linalg.vector_norm(p.grad, dtype=torch.float64).item()
        for p in parameters
        if p.grad is not None
    ]
    return math.sqrt(sum(norm * norm for norm in norms))
