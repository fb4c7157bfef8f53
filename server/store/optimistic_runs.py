"""Train requests and ComputeGradients batches run optimistically: taken as the local loop takes
them, their values checked once at the end, and, if a check fails, run again with every check.

Owned by ParameterStore (parameter_store.py), which calls it with its lock held where it
computes and steps on this process; it reads and writes the store's LiveState (live_state.py).
A Train request first copies what it can change (RequestStart: parameters, .grad, buffers,
optimizer state, version and counts, the RNG state that dropout draws from), then runs the
steps the way the seed loop does: `loss.backward()` straight into .grad, the optimizer's step,
no reduction per batch or per step. At the end it reads every loss and every update's gradient
norm at once and checks the parameters, the optimizer state and .grad in one reduction. When
something is not finite, or anything raised, the copy is put back and the request runs step by
step through today's checked path, which raises the error, with the field, the reason and the
steps before the failing one applied, exactly as before.

A ComputeGradients batch (the run's loss, weight 1, no returned gradients) is the same in
small: .grad copied, the loss checked, backward() into .grad, one check of .grad; when it fails,
.grad, the buffers and the RNG go back and accumulation.py's checked path names the culprit.

Why one check at the end sees every step that the checked path would refuse:
- a batch is refused when its loss, its gradient or the sum with .grad is not finite; every
  loss is read, and a NaN/Inf gradient or an overflowing sum leaves .grad not finite until the
  next update, whose norm (read) is then not finite, or until the end (checked);
- a dataset pass that asks for no norms skips the update's norm (unless it clips): a gradient
  that is not finite then reaches the parameters through the step (`p - lr*g` is NaN/Inf, for
  any lr, 0 included; torch.optim's moments keep it in the state), which the end checks;
- an update is refused when it leaves a parameter or an optimizer-state tensor not finite; later
  steps change these only by arithmetic that keeps NaN/Inf (`p - lr*g`, torch.optim's moments,
  maxima and decays), so the end's check sees them;
- the backward() sums are the same additions that the checked path makes out of place
  (accumulation.py), and the steps' arithmetic is the same functions (updates.py): a request
  that passes is bitwise the one the checked path would have run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gradserve.types import StepResult, TrainResult, TrainStep

from ..models.losses import batch_loss_function
from ..models.model import (
    CONCATENATED_ELEMENTS,
    all_finite_tensors,
    float64_norm,
    forward_of,
)
from ..models.randomness import seeded
from .accumulation import backward_into_grad, check_loss
from .live_state import LiveState
from .updates import StepRollback, unchecked_step


@dataclass
class RequestStart:
    """What a Train request can change, as it was when the request started."""

    counts: tuple[int, int, int]
    # Which parameters had a .grad (its values are in the store's gradient copies).
    had_gradient: list[bool]
    optimizer: object
    rng: torch.Tensor
    device_rng: torch.Tensor | None


class OptimisticRuns:
    """Train requests and ComputeGradients batches of one store's LiveState, run unchecked
    first; the store calls it with its lock held. `rollback` is the store's step (its
    parameter copies hold RequestStart's parameters)."""

    def __init__(self, state: LiveState, rollback: StepRollback) -> None:
        self._state = state
        self._rollback = rollback
        # Where RequestStart's .grad and buffer values are copied (allocated on first use;
        # the parameters go into the rollback's copies).
        self._gradient_copies: list[torch.Tensor] = []
        self._buffer_copies: list[torch.Tensor] = []
        parameters = state.parameters
        # Whether a batch's .grad check is its float64 norm (small float32/16 models), and
        # the last such norm with the .grad tensors and versions it was taken of.
        self._norm_checks = sum(p.numel() for p in parameters) <= CONCATENATED_ELEMENTS and all(
            p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in parameters
        )
        self._known_norm: tuple[float, list[torch.Tensor], list[int]] | None = None

    def train_optimistically(
        self, steps: Sequence[TrainStep], sizes: Sequence[Sequence[int]], *, norms: bool = True
    ) -> TrainResult | None:
        """The request's result, or None with the store as the request found it when some
        step would be refused (or raised): then the caller runs the checked path. Without
        `norms` an update that does not clip answers gradient_norm 0.0 instead of computing
        it (a dataset pass that did not ask for norms; why the end's check still sees a
        gradient that was not finite: the module's docstring)."""
        start = self._request_start()
        try:
            result = self._run_unchecked(steps, sizes, norms)
        except Exception:  # the checked run raises it again, with its field and note
            result = None
        if result is None:
            self._put_back(start)
        return result

    def _request_start(self) -> RequestStart:
        gradients = [p.grad for p in self._state.parameters]
        had = [g is not None for g in gradients]
        # Only once a request finds some .grad to keep: under torch.optim's zero_grad (.grad
        # None after each step) a run never holds this second copy of its parameters' size.
        if any(had) and not self._gradient_copies:
            self._gradient_copies = [torch.empty_like(p) for p in self._state.parameters]
        if len(self._buffer_copies) != len(self._state.buffers):
            self._buffer_copies = [torch.empty_like(b) for b in self._state.buffers.values()]
        sources = [*self._state.parameters, *self._state.buffers.values()]
        sources += [g for g in gradients if g is not None]
        targets = [*self._rollback.parameter_copies(), *self._buffer_copies]
        if any(had):
            targets += [c for c, h in zip(self._gradient_copies, had, strict=True) if h]
        with torch.no_grad():
            torch._foreach_copy_(targets, sources)
        device_rng = (
            torch.cuda.get_rng_state(self._state.device)
            if self._state.device.type == "cuda"
            else None
        )
        return RequestStart(
            (self._state.version, self._state.accumulated_batches, self._state.accumulated_samples),
            had,
            self._state.optimizer.saved_state(),
            torch.get_rng_state(),
            device_rng,
        )

    def _put_back(self, start: RequestStart) -> None:
        with torch.no_grad():
            torch._foreach_copy_(
                [*self._state.parameters, *self._state.buffers.values()],
                [*self._rollback.parameter_copies(), *self._buffer_copies],
            )
        self._put_gradients_back(start.had_gradient)
        self._state.optimizer.restore_saved_state(start.optimizer)
        self._state.version, self._state.accumulated_batches, self._state.accumulated_samples = (
            start.counts
        )
        torch.set_rng_state(start.rng)
        if start.device_rng is not None:
            torch.cuda.set_rng_state(start.device_rng, self._state.device)

    def _put_gradients_back(self, had: Sequence[bool]) -> None:
        # No copies are allocated while no parameter ever had a .grad: then none gets one.
        copies = self._gradient_copies or self._state.parameters
        for parameter, copy, present in zip(self._state.parameters, copies, had, strict=True):
            parameter.grad = copy.clone() if present else None

    def accumulate_optimistically(
        self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int
    ) -> float | None:
        """One ComputeGradients batch with the run's loss and weight 1, as the local loop
        takes it: the loss checked, backward() straight into .grad, then one reduction over
        .grad. None, with .grad, the buffers and the RNG put back, when .grad is not finite:
        the caller's checked path (accumulation.py) then says which gradient failed or that
        the sum overflows."""
        gradients = [p.grad for p in self._state.parameters]
        had = [g is not None for g in gradients]
        if any(had):
            if not self._gradient_copies:
                self._gradient_copies = [torch.empty_like(p) for p in self._state.parameters]
            torch._foreach_copy_(  # .grad needs no grad: no no_grad() here
                [c for c, h in zip(self._gradient_copies, had, strict=True) if h],
                [g for g in gradients if g is not None],
            )
        rng = torch.get_rng_state()
        device_rng = (
            torch.cuda.get_rng_state(self._state.device)
            if self._state.device.type == "cuda"
            else None
        )
        try:
            with self._state.buffer_keeper.kept():
                loss_value = self._backward_checked(inputs, targets)
        except _NotFinite:
            self._put_gradients_back(had)
            torch.set_rng_state(rng)
            if device_rng is not None:
                torch.cuda.set_rng_state(device_rng, self._state.device)
            return None
        except Exception:  # a refused loss, or torch failing mid-backward: .grad as it was
            self._put_gradients_back(had)
            raise
        self._state.accumulated_batches += 1
        self._state.accumulated_samples += batch_size
        return loss_value

    def _backward_checked(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        module = self._state.model.module
        if not module.training:
            module.train()
        if inputs.device != self._state.device:
            inputs, targets = inputs.to(self._state.device), targets.to(self._state.device)
        loss = self._state.model.loss.function(module(inputs), targets)
        loss_value: float = loss.item()
        check_loss(loss_value, self._state.version)
        backward_into_grad(loss)
        present = [g for p in self._state.parameters if (g := p.grad) is not None]
        if not self._norm_checks:
            if not all_finite_tensors(present):
                raise _NotFinite
            return loss_value
        # Small float32/16 gradients: their float64 norm costs what the sum check costs and is
        # finite exactly when they are; an update that finds .grad unchanged answers it.
        norm = float64_norm(present)
        if not math.isfinite(norm):
            raise _NotFinite
        self._known_norm = (norm, present, [g._version for g in present])
        return loss_value

    def take_known_norm(self) -> float | None:
        """The norm the last batch found, if .grad is still what it left (the same tensors,
        not changed in place since: torch counts in-place changes in `_version`)."""
        known, self._known_norm = self._known_norm, None
        if known is None:
            return None
        norm, tensors, versions = known
        present = [g for p in self._state.parameters if (g := p.grad) is not None]
        if len(present) != len(tensors):
            return None
        for gradient, tensor, version in zip(present, tensors, versions, strict=True):
            if gradient is not tensor or gradient._version != version:
                return None
        return norm

    def _run_unchecked(
        self, steps: Sequence[TrainStep], sizes: Sequence[Sequence[int]], norms: bool = True
    ) -> TrainResult | None:
        model, module, device = self._state.model, self._state.model.module, self._state.device
        if not module.training:
            module.train()
        losses: list[torch.Tensor] = []
        step_norms: list[float | torch.Tensor] = []
        # Per step: its losses' end, its version, its accumulated or applied batches, and
        # whether it clipped (None: no update).
        done: list[tuple[int, int, int, bool | None]] = []
        for step, step_sizes in zip(steps, sizes, strict=True):
            for index, (given_inputs, given_targets) in enumerate(step.batches):
                function = model.loss.function
                if step.batch_losses:
                    function = batch_loss_function(model, step, index) or function
                inputs, targets = given_inputs, given_targets
                if inputs.device != device:
                    inputs, targets = inputs.to(device), targets.to(device)
                with seeded(None if step.seed is None else step.seed + index, device):
                    loss = function(forward_of(module, inputs, function), targets)
                backward_into_grad(loss)
                losses.append(loss.detach())
            self._state.accumulated_batches += len(step_sizes)
            self._state.accumulated_samples += sum(step_sizes)
            if not step.apply_update:
                done.append(
                    (len(losses), self._state.version, self._state.accumulated_batches, None)
                )
                continue
            batches = self._state.accumulated_batches
            if step.expected_version not in (None, self._state.version) or not batches:
                return None
            norm, clipped = unchecked_step(
                self._state.parameters,
                self._state.optimizer,
                step.learning_rate,
                reduction=step.reduction,
                batches=batches,
                hyperparameters=step.hyperparameters,
                max_grad_norm=step.max_grad_norm,
                norm=norms,
            )
            step_norms.append(norm)
            self._state.version += 1
            self._state.accumulated_batches = self._state.accumulated_samples = 0
            done.append((len(losses), self._state.version, batches, clipped))
        return self._checked_result(losses, step_norms, done)

    def _checked_result(
        self,
        losses: list[torch.Tensor],
        norms: list[float | torch.Tensor],
        done: list[tuple[int, int, int, bool | None]],
    ) -> TrainResult | None:
        loss_values, norm_values = _read(losses), iter(_read(norms))
        if not all(map(math.isfinite, loss_values)):
            return None
        state = [*self._state.parameters, *self._state.optimizer.state_tensors()]
        state += [p.grad for p in self._state.parameters if p.grad is not None]
        with torch.no_grad():
            if not all_finite_tensors(state):
                return None
        results = []
        first = 0
        for end, version, batches, clipped in done:
            step_losses = tuple(loss_values[first:end])
            first = end
            if clipped is None:
                results.append(StepResult(step_losses, version, batches))
                continue
            norm = next(norm_values)
            if not math.isfinite(norm):
                return None
            results.append(StepResult(step_losses, version, 0, True, batches, norm, clipped))
        return TrainResult(tuple(results))


def _read(values: list[float | torch.Tensor] | list[torch.Tensor]) -> list[float]:
    """Python floats of 0-d tensors (and floats), read back together where they can be."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if len(tensors) != len(values) or len({t.dtype for t in tensors}) > 1:
        return [float(v) for v in values]
    return torch.stack(tensors).tolist() if tensors else []


class _NotFinite(Exception):
    """.grad is not finite after a batch's backward(): put it back, check the batch again."""
