"""The update step: its checks, the MEAN reduction, the gradient norm, clipping, and the step
itself, taken so that a step whose result is not finite is undone exactly (StepRollback)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gradserve.errors import FailedPreconditionError, InvalidArgumentError
from gradserve.types import Reduction

from ..models.hyperparameters import NO_OVERRIDES, Hyperparameters
from ..models.model import all_finite_tensors, float64_norm, float64_norm_tensor
from ..models.optimizers import Optimizer

_UNCHANGED = (
    "nothing was applied: the parameters, the optimizer state, the version and the "
    "accumulated gradients are as before this update"
)


def check_learning_rate(learning_rate: float) -> None:
    if not math.isfinite(learning_rate) or learning_rate < 0:
        raise InvalidArgumentError(
            f"learning_rate: {learning_rate}, expected a finite number >= 0",
            field="learning_rate",
        )


def check_max_grad_norm(max_grad_norm: float | None) -> None:
    if max_grad_norm is not None and not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise InvalidArgumentError(
            f"max_grad_norm: {max_grad_norm}, expected a finite number > 0 (or unset)",
            field="max_grad_norm",
        )


def check_update(
    optimizer: Optimizer,
    learning_rate: float,
    hyperparameters: Hyperparameters,
    max_grad_norm: float | None,
) -> None:
    """Everything an update brings, checked before anything changes."""
    check_learning_rate(learning_rate)
    optimizer.check_hyperparameters(hyperparameters)
    check_max_grad_norm(max_grad_norm)


def clip_gradients(parameters: Sequence[torch.Tensor], max_norm: float) -> tuple[float, bool]:
    """torch.nn.utils.clip_grad_norm_'s arithmetic (its own norm function, the same 1e-6 and
    clamp), but out of place: scaled gradients replace .grad, so the old tensors are what a
    refused step puts back. Returns (the total norm before clipping, whether it scaled);
    gradients that are not finite raise before anything is scaled."""
    gradients = [p.grad for p in parameters if p.grad is not None]
    if not gradients:
        return 0.0, False
    total = torch.nn.utils.get_total_norm(gradients, 2.0)
    norm = float(total)
    if not math.isfinite(norm) and not all_finite_tensors(gradients):
        raise _not_finite()
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    # A coefficient of 1 leaves every finite value as it is: torch multiplies anyway.
    if not bool(coefficient < 1.0):
        return norm, False
    with torch.no_grad():
        scaled = iter(torch._foreach_mul(gradients, coefficient))
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.grad = next(scaled)
    return norm, True


def _not_finite() -> FailedPreconditionError:
    return FailedPreconditionError(
        f"learning_rate: the accumulated gradients are not finite; {_UNCHANGED}",
        field="learning_rate",
    )


def divide_gradients(parameters: Sequence[torch.Tensor], batches: int) -> None:
    """MEAN: the accumulated sum over `batches` batches divided by their number, into new
    tensors (the old ones are what a refused step puts back)."""
    if batches > 1:
        with torch.no_grad():
            for parameter in parameters:
                if parameter.grad is not None:
                    parameter.grad = parameter.grad / batches


def total_norm(parameters: Sequence[torch.Tensor]) -> float:
    """The accumulated gradients' 2-norm, reduced in float64."""
    return float(total_norm_unread(parameters))


def total_norm_unread(parameters: Sequence[torch.Tensor]) -> float | torch.Tensor:
    """total_norm, as a 0-d tensor not yet read back where it is one reduction (no float64
    gradient), so that a Train request reads all its norms at once (optimistic_runs.py)."""
    gradients = [p.grad for p in parameters if p.grad is not None]
    if not gradients:
        return 0.0
    wide = [g for g in gradients if g.dtype == torch.float64]
    if not wide:
        return float64_norm_tensor(gradients)
    narrow = float64_norm([g for g in gradients if g.dtype != torch.float64])
    return math.hypot(narrow, *(torch.linalg.vector_norm(g).item() for g in wide))


def unchecked_step(
    parameters: Sequence[torch.Tensor],
    optimizer: Optimizer,
    learning_rate: float,
    *,
    reduction: Reduction,
    batches: int,
    hyperparameters: Hyperparameters = NO_OVERRIDES,
    max_grad_norm: float | None = None,
    norm: bool = True,
) -> tuple[float | torch.Tensor, bool]:
    """StepRollback.step's arithmetic without its checks and copies, for a Train request run
    optimistically (optimistic_runs.py checks the request's results once and, when they are
    not all finite, puts the request's start back and runs it again through StepRollback).
    Returns (the norm before clipping, maybe unread; whether it clipped); .grad is cleared.
    Without `norm`, no norm is computed unless clipping needs it (0.0 is returned)."""
    if reduction is Reduction.MEAN:
        divide_gradients(parameters, batches)
    clipped = False
    value: float | torch.Tensor = 0.0
    if max_grad_norm is not None:
        value, clipped = clip_gradients(parameters, max_grad_norm)
    elif norm:
        value = total_norm_unread(parameters)
    optimizer.step_and_zero_grad(learning_rate, hyperparameters)
    return value, clipped


class StepRollback:
    """Takes optimizer steps that leave every parameter and optimizer-state tensor finite, or
    none: what a step changes is copied first and put back when its result is not finite.

    The parameters' copies live in buffers allocated on the first step (one more copy of the
    parameters in memory), so saving them is one multi-tensor copy."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], optimizer: Optimizer) -> None:
        self._parameters: list[torch.Tensor] = list(parameters)
        self._optimizer = optimizer
        self._copies: list[torch.Tensor] = []

    def step(
        self,
        learning_rate: float,
        reduction: Reduction,
        batches: int,
        hyperparameters: Hyperparameters = NO_OVERRIDES,
        max_grad_norm: float | None = None,
        *,
        known_norm: float | None = None,
    ) -> tuple[float, bool]:
        """One step with the accumulated .grad, reduced, then clipped to `max_grad_norm` when
        set; returns (the norm before clipping, whether it clipped). Raises
        FailedPreconditionError, changing nothing, when the gradients, the stepped parameters
        or the optimizer state would not be finite. `known_norm`: total_norm of .grad as it
        is now (finite), used where reducing leaves .grad as it is."""
        # MEAN over one batch and no clipping leave .grad as it is: its norm is known.
        unchanged = max_grad_norm is None and (reduction is Reduction.SUM or batches == 1)
        if known_norm is not None and unchanged:
            self._stepped(learning_rate, hyperparameters)
            return known_norm, False
        replaced = reduction is Reduction.MEAN or max_grad_norm is not None
        accumulated = [p.grad for p in self._parameters] if replaced else []
        if reduction is Reduction.MEAN:
            divide_gradients(self._parameters, batches)
        try:
            clipped = False
            if max_grad_norm is None:
                norm = total_norm(self._parameters)
                if not math.isfinite(norm) and not all_finite_tensors(
                    [p.grad for p in self._parameters if p.grad is not None]
                ):
                    raise _not_finite()
            else:
                norm, clipped = clip_gradients(self._parameters, max_grad_norm)
            self._stepped(learning_rate, hyperparameters)
        except FailedPreconditionError:
            if accumulated:  # MEAN and clipping make new tensors: the accumulated ones go back
                for parameter, gradient in zip(self._parameters, accumulated, strict=True):
                    parameter.grad = gradient
            raise
        return norm, clipped

    def parameter_copies(self) -> list[torch.Tensor]:
        """The tensors a step copies the parameters into, allocated on first use. A Train
        request's start (optimistic_runs.py) is kept in them too: it is put back before any
        checked step runs, so one copy of the parameters serves both."""
        if not self._copies:
            self._copies = [torch.empty_like(p) for p in self._parameters]
        return self._copies

    def _stepped(self, learning_rate: float, hyperparameters: Hyperparameters) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.parameter_copies(), self._parameters)
            saved = self._optimizer.saved_state()
            what = "the parameters"
            try:
                self._optimizer.step(learning_rate, hyperparameters)
                # One reduction over both; which one failed is looked up only then.
                state = self._optimizer.state_tensors()
                if all_finite_tensors([*self._parameters, *state]):
                    return
                if all_finite_tensors(self._parameters):
                    what = "the optimizer state"
            except RuntimeError as error:
                # torch.optim refuses a rate its dtype cannot hold, perhaps mid-step.
                if "overflow" not in str(error):
                    self._restore(saved)
                    raise
            self._restore(saved)
        raise FailedPreconditionError(
            f"learning_rate: a step at learning_rate {learning_rate} makes {what} not finite "
            f"(it overflows); {_UNCHANGED}",
            field="learning_rate",
        )

    def _restore(self, saved: object) -> None:
        torch._foreach_copy_(self._parameters, self._copies)
        self._optimizer.restore_saved_state(saved)
