"""The checks a Train request passes before any of its steps runs."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from gradserve.errors import GradserveError, InvalidArgumentError, ResourceExhaustedError
from gradserve.types import TrainStep

from ..models.losses import checked_batch_size
from ..models.model import Model
from ..models.optimizers import Optimizer
from .buffers import check_training_batch
from .error_scope import scoped
from .updates import check_learning_rate, check_update

# One Train request runs under the lock from start to end: bound how long that can be.
MAX_BATCHES_PER_REQUEST = 100_000
_UNSCOPED = contextlib.nullcontext()


def check_steps(
    model: Model,
    steps: Sequence[TrainStep],
    smallest_batch: int = 1,
    optimizer: Optimizer | None = None,
) -> list[list[int]]:
    """Every step's batch sizes; the first malformed field raises, naming its path.
    `smallest_batch`: the fewest samples a training batch may have (2 with batch norm,
    buffers.smallest_training_batch), so that no step runs when a later one would be refused.
    With `optimizer`, each update's hyperparameters and max_grad_norm are checked against it.

    The batches' values (finite, class indices in range) are checked for the whole request in
    a few reductions; only when something fails is every batch checked in turn, so that the
    error is the first failing field in request order."""
    try:
        sizes, inputs, targets = _checked(model, steps, smallest_batch, optimizer, values=False)
        if model.values_fit(inputs, targets):
            return sizes
    except (GradserveError, RuntimeError):  # RuntimeError: batches on several devices
        pass
    return _checked(model, steps, smallest_batch, optimizer, values=True)[0]


def _checked(
    model: Model,
    steps: Sequence[TrainStep],
    smallest_batch: int,
    optimizer: Optimizer | None,
    *,
    values: bool,
) -> tuple[list[list[int]], list[torch.Tensor], list[torch.Tensor]]:
    """The sizes, and the batches whose values are left to the caller (`values=False`; a
    batch with its own loss is checked whole here)."""
    if not steps:
        raise InvalidArgumentError("steps: the request has no steps", field="steps")
    total = sum(len(step.batches) for step in steps)
    if total > MAX_BATCHES_PER_REQUEST:
        raise ResourceExhaustedError(
            f"steps: {total} batches in one request, at most {MAX_BATCHES_PER_REQUEST}",
            field="steps",
        )
    sizes: list[list[int]] = []
    left_inputs: list[torch.Tensor] = []
    left_targets: list[torch.Tensor] = []
    for index, step in enumerate(steps):
        if not step.batches and not step.apply_update:
            raise InvalidArgumentError(
                f"steps[{index}]: neither batches nor an update", field=f"steps[{index}]"
            )
        if step.batch_losses and len(step.batch_losses) != len(step.batches):
            raise InvalidArgumentError(
                f"steps[{index}]: {len(step.batch_losses)} batch losses for "
                f"{len(step.batches)} batches",
                field=f"steps[{index}].batches",
            )
        step_sizes = []
        for batch_index, (inputs, targets) in enumerate(step.batches):
            choice = step.batch_losses[batch_index] if step.batch_losses else None
            # Unscoped without `values`: whatever fails there raises again, scoped, below.
            with scoped(f"steps[{index}].batches[{batch_index}]") if values else _UNSCOPED:
                if choice is not None or values:
                    step_sizes.append(checked_batch_size(model, inputs, targets, choice))
                else:
                    step_sizes.append(model.check_batch(inputs, targets, values=False))
                    left_inputs.append(inputs)
                    left_targets.append(targets)
                check_training_batch(step_sizes[-1], smallest_batch)
        if step.apply_update:
            with scoped(f"steps[{index}]") if values else _UNSCOPED:
                if optimizer is None:
                    check_learning_rate(step.learning_rate)
                else:
                    check_update(
                        optimizer, step.learning_rate, step.hyperparameters, step.max_grad_norm
                    )
        sizes.append(step_sizes)
    return sizes, left_inputs, left_targets
