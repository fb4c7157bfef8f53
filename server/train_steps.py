"""The checks a Train request passes before any of its steps runs."""

from __future__ import annotations

from collections.abc import Sequence

from gradserve.errors import InvalidArgumentError, ResourceExhaustedError
from gradserve.server.buffers import check_training_batch
from gradserve.server.error_scope import scoped
from gradserve.server.losses import checked_batch_size
from gradserve.server.models import Model
from gradserve.server.optimizers import Optimizer
from gradserve.server.updates import check_learning_rate, check_update
from gradserve.types import TrainStep

# One Train request runs under the lock from start to end: bound how long that can be.
MAX_BATCHES_PER_REQUEST = 100_000


def check_steps(
    model: Model,
    steps: Sequence[TrainStep],
    smallest_batch: int = 1,
    optimizer: Optimizer | None = None,
) -> list[list[int]]:
    """Every step's batch sizes; the first malformed field raises, naming its path.
    `smallest_batch`: the fewest samples a training batch may have (2 with batch norm,
    buffers.smallest_training_batch), so that no step runs when a later one would be refused.
    With `optimizer`, each update's hyperparameters and max_grad_norm are checked against it."""
    if not steps:
        raise InvalidArgumentError("steps: the request has no steps", field="steps")
    total = sum(len(step.batches) for step in steps)
    if total > MAX_BATCHES_PER_REQUEST:
        raise ResourceExhaustedError(
            f"steps: {total} batches in one request, at most {MAX_BATCHES_PER_REQUEST}",
            field="steps",
        )
    sizes: list[list[int]] = []
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
            with scoped(f"steps[{index}].batches[{batch_index}]"):
                step_sizes.append(checked_batch_size(model, inputs, targets, choice))
                check_training_batch(step_sizes[-1], smallest_batch)
        if step.apply_update:
            with scoped(f"steps[{index}]"):
                if optimizer is None:
                    check_learning_rate(step.learning_rate)
                else:
                    check_update(
                        optimizer, step.learning_rate, step.hyperparameters, step.max_grad_norm
                    )
        sizes.append(step_sizes)
    return sizes
