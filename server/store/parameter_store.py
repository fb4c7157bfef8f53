"""Where the parameters live: the model, its accumulated gradients, its version, and one lock.

Plain torch, no protobuf. The rule for concurrent calls: every ComputeGradients that returns
has added its batch's gradients; an update applies everything that finished before it took the
lock; a rejected call changes nothing (checks run before any state is touched, or what a call
ran optimistically is put back). The pieces live beside it: optimistic_runs.py (Train and
ComputeGradients as the local loop runs them, checked once), accumulation.py (one batch into
.grad, checked), updates.py (the step's arithmetic), train_steps.py (Train's checks),
pass_runs.py (dataset passes), parameter_access.py (parameter checks), graph_trace.py
(DescribeGraph), request_ids.py (replays), state_transfer.py (checkpoints in and out).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from gradserve.errors import FailedPreconditionError, VersionConflictError
from gradserve.types import (
    BatchLoss,
    DiscardResult,
    GradientResult,
    Reduction,
    StepResult,
    TrainResult,
    TrainStep,
    UpdateResult,
)

from ..models.hyperparameters import NO_OVERRIDES, Hyperparameters
from ..models.losses import batch_loss_function, prepare
from ..models.model import CONCATENATED_ELEMENTS, LossFunction, Model
from ..models.optimizers import Optimizer
from ..tracing import traced
from .accumulation import Gradients, add_gradients, batch_gradients
from .buffers import BufferKeeper, model_buffers, smallest_training_batch
from .error_scope import scoped
from .model_access import ModelAccess
from .optimistic_runs import OptimisticRuns
from .output_handles import OutputHandles
from .output_passes import OutputPasses
from .parameter_access import check_names
from .pass_runs import PassRuns
from .request_ids import DEFAULT_WINDOW_BYTES, RequestIdWindow, check_request_id
from .state_transfer import StateTransfer
from .store_state import StoreState
from .train_steps import check_steps
from .updates import StepRollback, check_update

T = TypeVar("T")
_NOTE = (
    "{index} of {count} steps of this request were applied before it; batches of this step "
    "that ran before the failure stay accumulated, as with the unary calls"
)


class ParameterStore(StateTransfer, OutputPasses, ModelAccess, OptimisticRuns, PassRuns):
    """One model's parameters, gradients and version, safe to call from many threads."""

    def __init__(
        self,
        model: Model,
        optimizer: Optimizer,
        request_id_window: int = 1024,
        request_id_window_bytes: int = DEFAULT_WINDOW_BYTES,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self._named = dict(model.module.named_parameters())
        self._parameters = list(self._named.values())
        self._rollback = StepRollback(self._parameters, optimizer)
        # Buffers (batch norm's statistics): kept through a refused batch, checkpointed.
        self._buffers = model_buffers(model.module)
        self._buffer_keeper = BufferKeeper(self._buffers)
        # Train runs a request unchecked first (optimistic_runs.py) where the store computes
        # and steps itself (data parallelism's store does not) and backward() reaches exactly
        # the parameters autograd.grad would.
        self._optimistic = (
            type(self)._compute is ParameterStore._compute
            and type(self)._step is ParameterStore._step
            and all(p.requires_grad for p in self._parameters)
        )
        self._gradient_copies: list[torch.Tensor] = []
        self._buffer_copies: list[torch.Tensor] = []
        self._norm_checks = sum(
            p.numel() for p in self._parameters
        ) <= CONCATENATED_ELEMENTS and all(
            p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in self._parameters
        )
        self._known_norm = None
        # What GetParameters and SetParameters may name: the parameters, then the buffers.
        self._tensors: dict[str, torch.Tensor] = {**self._named, **self._buffers}
        self._smallest_batch = smallest_training_batch(model)
        # The model's device (--device); requests move there once, results come back to CPU.
        self.device = self._parameters[0].device if self._parameters else torch.device("cpu")
        self._lock = threading.Lock()
        self._request_ids = RequestIdWindow(request_id_window, request_id_window_bytes)
        # ComputeOutputs' forward passes, kept for BackwardOutputs (output_passes.py).
        self.output_handles = OutputHandles()
        # Read without the lock only where one int is enough (metrics gauges); anything that
        # needs a consistent view goes through snapshot() or holds the lock.
        self.version = 0
        self.accumulated_batches = 0
        self.accumulated_samples = 0
        # --checkpoint-every-updates N (checkpoints/files.py sets it): a request of many steps
        # is cut after each update that reaches a multiple of N, and the state there is
        # handed to `save`, so the cadence counts updates whatever the transport.
        self.update_cadence: tuple[int, Callable[[StoreState], object]] | None = None

    def snapshot(self) -> tuple[int, int, int]:
        """(version, accumulated batches, accumulated samples), read together under the lock."""
        with self._lock:
            return self.version, self.accumulated_batches, self.accumulated_samples

    # -- gradients and updates -------------------------------------------------------------

    @traced("gradserve.compute_gradients")
    def compute_gradients(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        request_id: str = "",
        return_gradients: bool = False,
        weigh: Callable[[int], float] | None = None,
        max_response_bytes: int | None = None,
        batch_loss: BatchLoss | None = None,
    ) -> GradientResult:
        """`weigh(version)` gives the factor for what is added to .grad (async mode's
        staleness check and down-weighting), called under the lock when the batch runs, not
        for a replay; the loss and the returned gradients are the batch's own. With
        `return_gradients`, a response over `max_response_bytes` is refused before any work.
        `batch_loss`: this batch's own loss and weights (server/models/losses.py); None: the run's."""
        check_request_id(request_id)
        function: LossFunction | None = None
        if batch_loss is None:
            batch_size = self.model.check_batch(inputs, targets)
        else:
            self.local_only("loss")
            batch_size, function = prepare(self.model, inputs, targets, batch_loss)
        if return_gradients and max_response_bytes is not None:
            check_names(self._named, (), max_response_bytes, size_field="return_gradients")

        def run() -> GradientResult:
            weight = 1.0 if weigh is None else weigh(self.version)
            # The batch's own gradients (to return, or to weigh) need autograd.grad.
            if self._optimistic and weight == 1.0 and function is None and not return_gradients:
                fast = self._accumulate_optimistically(inputs, targets, batch_size)
                if fast is not None:
                    return GradientResult(
                        loss=fast,
                        batch_size=batch_size,
                        accumulated_batches=self.accumulated_batches,
                        accumulated_samples=self.accumulated_samples,
                        model_version=self.version,
                    )
            loss, gradients = self._accumulate(inputs, targets, batch_size, weight, function)
            own: dict[str, torch.Tensor] = {}
            if return_gradients:
                own = {
                    name: (g if g is not None else torch.zeros_like(p)).cpu()
                    for (name, p), g in zip(self._named.items(), gradients, strict=True)
                }
            return GradientResult(
                loss=loss,
                batch_size=batch_size,
                accumulated_batches=self.accumulated_batches,
                accumulated_samples=self.accumulated_samples,
                model_version=self.version,
                gradients=own,
            )

        with self._lock:
            # The loss joins the fingerprint only when chosen: older windows stay valid.
            chosen = () if batch_loss is None else (batch_loss,)
            return self._request_ids.remembered(
                "compute_gradients", request_id, run, inputs, targets, return_gradients, *chosen
            )

    @traced("gradserve.apply_update")
    def apply_update(
        self,
        learning_rate: float,
        *,
        reduction: Reduction = Reduction.SUM,
        expected_version: int | None = None,
        request_id: str = "",
        hyperparameters: Hyperparameters = NO_OVERRIDES,
        max_grad_norm: float | None = None,
    ) -> UpdateResult:
        """With this update's optimizer overrides and clipping (updates.py)."""
        check_request_id(request_id)
        check_update(self.optimizer, learning_rate, hyperparameters, max_grad_norm)
        overrides = dict(sorted(hyperparameters.items()))
        # Fingerprinted only when set: a plain update's fingerprint stays what it was.
        extra = (tuple(overrides.items()), max_grad_norm) if overrides or max_grad_norm else ()
        with self._lock:
            return self._request_ids.remembered(
                "apply_update",
                request_id,
                lambda: self._step(
                    learning_rate, reduction, expected_version, overrides, max_grad_norm
                ),
                learning_rate,
                reduction,
                expected_version,
                *extra,
            )

    @traced("gradserve.train")
    def train(self, steps: Sequence[TrainStep], *, request_id: str = "") -> TrainResult:
        """Run steps in order: each step's batches as compute_gradients, then its update as
        apply_update. Everything is checked before anything runs; a step that fails while
        running raises with the number of steps already applied in the message."""
        check_request_id(request_id)
        sizes = check_steps(self.model, steps, self._smallest_batch, self.optimizer)

        with self._lock:
            return self._request_ids.remembered(
                "train",
                request_id,
                lambda: self._run_steps(steps, sizes, "steps", _NOTE),
                tuple(steps),
            )

    def _run_steps(
        self,
        steps: Sequence[TrainStep],
        sizes: Sequence[list[int]],
        where: str,
        note: str,
        *,
        norms: bool = True,
    ) -> TrainResult:
        """Train's steps (and a dataset pass's, pass_runs.py) with the lock held: all at once
        optimistically (optimistic_runs.py), else one by one through the checked path, step i
        named `{where}[i]` in its error with `note` (formatted with index and count); cut at
        the checkpoint cadence's versions when there is one."""
        cadence = self.update_cadence
        if cadence is None:
            return self._run_part(steps, sizes, where, note, range(len(steps)), norms=norms)
        every, save = cadence
        results: list[StepResult] = []
        start, version = 0, self.version
        for index, step in enumerate(steps):
            version += step.apply_update
            if (step.apply_update and version % every == 0) or index == len(steps) - 1:
                done = range(start, index + 1)
                part = self._run_part(steps, sizes, where, note, done, norms=norms)
                results.extend(part.steps)
                start = index + 1
                if self.version % every == 0 and step.apply_update:
                    save(self._state_copy())
        return TrainResult(tuple(results))

    def _run_part(
        self,
        steps: Sequence[TrainStep],
        sizes: Sequence[list[int]],
        where: str,
        note: str,
        part: range,
        *,
        norms: bool,
    ) -> TrainResult:
        """The steps of `part`, named by their index in the whole request."""
        if self._optimistic:
            chosen = slice(part.start, part.stop)
            result = self._train_optimistically(steps[chosen], sizes[chosen], norms=norms)
            if result is not None:
                return result
        results = []
        for index in part:
            with scoped(f"{where}[{index}]", note=note.format(index=index, count=len(steps))):
                results.append(self._run_step(steps[index], sizes[index]))
        return TrainResult(tuple(results))

    def _run_step(self, step: TrainStep, sizes: list[int]) -> StepResult:
        losses = tuple(
            self._accumulate(inputs, targets, size, 1.0, batch_loss_function(self.model, step, i))[
                0
            ]
            for i, ((inputs, targets), size) in enumerate(zip(step.batches, sizes, strict=True))
        )
        if not step.apply_update:
            return StepResult(losses, self.version, self.accumulated_batches)
        update = self._step(
            step.learning_rate,
            step.reduction,
            step.expected_version,
            step.hyperparameters,
            step.max_grad_norm,
        )
        done = (update.model_version, 0, True, update.applied_batches, update.gradient_norm)
        return StepResult(losses, *done, update.clipped)

    def _accumulate(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        weight: float = 1.0,
        loss_function: LossFunction | None = None,
    ) -> tuple[float, Gradients]:
        """Compute one batch's gradients, then add them. Call with the lock held. A refused
        batch leaves the buffers its forward pass changed as they were."""
        with self._buffer_keeper.kept():
            if loss_function is None:
                loss, gradients = self._compute(inputs, targets, weight)
            else:
                loss, gradients = self._compute_with(inputs, targets, loss_function)
            self._add(gradients, batch_size, weight)
        return loss, gradients

    def _compute(
        self, inputs: torch.Tensor, targets: torch.Tensor, weight: float
    ) -> tuple[float, Gradients]:
        """Forward, loss and checked gradients (distributed.py computes these over ranks)."""
        if inputs.device != self.device:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
        return batch_gradients(
            self.model, self._named, self._parameters, inputs, targets, version=self.version
        )

    def _add(self, gradients: Gradients, batch_size: int, weight: float) -> None:
        add_gradients(self._named, gradients, weight, version=self.version)
        self.accumulated_batches += 1
        self.accumulated_samples += batch_size

    def _step(
        self,
        learning_rate: float,
        reduction: Reduction,
        expected_version: int | None,
        hyperparameters: Hyperparameters = NO_OVERRIDES,
        max_grad_norm: float | None = None,
    ) -> UpdateResult:
        """One optimizer step with the accumulated gradients. Call with the lock held."""
        self._check_version(expected_version)
        if self.accumulated_batches == 0:
            raise FailedPreconditionError(
                "nothing to apply: no gradients accumulated since the last update",
                reason="NOTHING_ACCUMULATED",
            )
        norm, clipped = self._rollback.step(
            learning_rate,
            reduction,
            self.accumulated_batches,
            hyperparameters,
            max_grad_norm,
            known_norm=self._take_known_norm(),
        )
        self.optimizer.zero_grad()
        batches, samples = self.accumulated_batches, self.accumulated_samples
        result = UpdateResult(self.version + 1, batches, samples, norm, clipped=clipped)
        self.version += 1
        self.accumulated_batches = 0
        self.accumulated_samples = 0
        return result

    def discard_gradients(self) -> DiscardResult:
        with self._lock:
            discarded = self.accumulated_batches
            self._drop_gradients()
            return DiscardResult(discarded_batches=discarded, model_version=self.version)

    def _drop_gradients(self) -> None:
        for parameter in self._parameters:
            parameter.grad = None
        self.accumulated_batches = 0
        self.accumulated_samples = 0

    def _check_version(self, expected_version: int | None) -> None:
        if expected_version is not None and expected_version != self.version:
            raise VersionConflictError(
                f"expected_version: {expected_version}, but the model is at version "
                f"{self.version}; nothing was applied",
                field="expected_version",
                metadata={
                    "expected_version": str(expected_version),
                    "model_version": str(self.version),
                },
            )
