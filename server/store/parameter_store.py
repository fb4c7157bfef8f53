"""Where the parameters live: one model's version, accumulated gradients and lock, with the
accumulate/step core; every other call is delegated to a collaborator the store owns.

Plain torch, no protobuf. The rule for concurrent calls: every ComputeGradients that returns
has added its batch's gradients; an update applies everything that finished before it took the
lock; a rejected call changes nothing (checks run before any state is touched, or what a call
ran optimistically is put back). What the store owns, each built here with what it needs:
live_state.py (the tensors, lock, version and counts they all share), compute.py (the compute
strategy: this process, or distributed.py's ranks), optimistic_runs.py (Train and
ComputeGradients as the local loop runs them, checked once), state_transfer.py (checkpoints in
and out), output_passes.py (ComputeOutputs, BackwardOutputs), model_access.py (evaluation,
parameters, info, the graph), pass_runs.py (dataset passes). Plain helpers: accumulation.py
(one batch into .grad, checked), updates.py (the step's arithmetic), train_steps.py (Train's
checks), parameter_access.py (parameter checks), request_ids.py (replays); shared_compute.py
(an adapter run's batches computed with other runs' on the same base, when its builder sets it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from gradserve.errors import FailedPreconditionError
from gradserve.types import (
    BatchLoss,
    GradientResult,
    OutputsResult,
    Reduction,
    StepResult,
    TrainResult,
    TrainStep,
    UpdateResult,
)

from ..models.hyperparameters import NO_OVERRIDES, Hyperparameters
from ..models.losses import answered_logprobs, batch_loss_function, prepare
from ..models.model import LossFunction, Model
from ..models.optimizers import Optimizer
from ..models.randomness import seeded
from ..tracing import traced
from .accumulation import Gradients, add_gradients
from .cadence import Cadence, StepRunner, run_steps
from .compute import ComputeStrategy, LocalCompute, local_gradients
from .live_state import LiveState
from .model_access import ModelAccess
from .optimistic_runs import OptimisticRuns
from .output_handles import HandleBounds
from .output_passes import OutputPasses
from .parameter_access import check_names
from .pass_runs import PassRuns
from .request_ids import DEFAULT_WINDOW_BYTES, RequestIdWindow, check_request_id
from .shared_compute import OnBatched, SharedCompute, accumulate_shared
from .state_transfer import StateTransfer
from .train_steps import check_steps
from .updates import StepRollback, check_update

T = TypeVar("T")
Batch = tuple[torch.Tensor, torch.Tensor]
_NOTE = (
    "{index} of {count} steps of this request were applied before it; batches of this step "
    "that ran before the failure stay accumulated, as with the unary calls"
)


class ParameterStore:
    """One model's parameters, gradients and version, safe to call from many threads.
    `compute_strategy` builds how batches are computed and what follows a step (compute.py's
    LocalCompute; distributed.py's DataParallelCompute under torchrun)."""

    def __init__(
        self,
        model: Model,
        optimizer: Optimizer,
        request_id_window: int = 1024,
        request_id_window_bytes: int = DEFAULT_WINDOW_BYTES,
        *,
        compute_strategy: Callable[[LiveState], ComputeStrategy] = LocalCompute,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        state = LiveState(
            model, optimizer, RequestIdWindow(request_id_window, request_id_window_bytes)
        )
        self._state = state
        # The same lock as the collaborators': tests hold it to stall the store.
        self._lock = state.lock
        self.device = state.device
        self.compute_strategy = compute_strategy(state)
        self._rollback = StepRollback(state.parameters, optimizer)
        # Train runs a request unchecked first (optimistic_runs.py) where this process computes
        # and steps (data parallelism does not) and backward() reaches exactly the parameters
        # autograd.grad would.
        self._optimistic = self.compute_strategy.world_size == 1 and all(
            p.requires_grad for p in state.parameters
        )
        self._optimistic_runs = OptimisticRuns(state, self._rollback)
        self._transfer = StateTransfer(state, self.compute_strategy)
        self._outputs = OutputPasses(state, self._add)
        # ComputeOutputs' forward passes, kept for BackwardOutputs.
        self.output_handles = self._outputs.handles
        self._access = ModelAccess(state, self._drop_gradients)
        self._passes = PassRuns(state, self._run_steps)
        # The calls a collaborator answers whole, each its bound method (same signature, no
        # extra frame): checkpoints and large reads,
        transfer = self._transfer
        self.encode_parameters = transfer.encode_parameters
        self.snapshot_parameters = transfer.snapshot_parameters
        self.export_state = transfer.export_state
        self.restore_state = transfer.restore_state
        self.state_digest = transfer.state_digest
        self.load_checkpoint = transfer.load_checkpoint
        self.fork_state = transfer.fork_state
        # BackwardOutputs (ComputeOutputs is refused first under data parallelism, below),
        self.backward_outputs = self._outputs.backward_outputs
        # evaluation, parameters, info, the graph,
        access = self._access
        self.parameter_bytes = access.parameter_bytes
        self.discard_gradients = access.discard_gradients
        self.copy_for_sampling = access.copy_for_sampling
        self.evaluate = access.evaluate
        self.read_parameters = access.read_parameters
        self.set_parameters = access.set_parameters
        self.info = access.info
        self.gradients = access.gradients
        self.describe_graph = access.describe_graph
        # and dataset passes.
        self.train_pass = self._passes.train_pass
        # --checkpoint-every-updates inside a request (cadence.py; checkpoints/files.py sets it).
        self.update_cadence: Cadence | None = None
        # Cross-run batches of an adapter run's ComputeGradients (the run's builder sets it).
        self.shared_compute: SharedCompute | None = None

    # Read without the lock only where one int is enough (metrics gauges); anything that
    # needs a consistent view goes through snapshot() or holds the lock.
    @property
    def version(self) -> int:
        return self._state.version

    @property
    def accumulated_batches(self) -> int:
        return self._state.accumulated_batches

    @property
    def accumulated_samples(self) -> int:
        return self._state.accumulated_samples

    def snapshot(self) -> tuple[int, int, int]:
        """(version, accumulated batches, accumulated samples), read together under the lock."""
        state = self._state
        with state.lock:
            return state.version, state.accumulated_batches, state.accumulated_samples

    def local_only(self, field: str, *, when: bool = True) -> None:
        """Per-batch losses and kept graphs are computed on this process: data parallelism
        (server/store/distributed.py) computes only the run's loss over its ranks."""
        if when and self.compute_strategy.world_size != 1:
            raise FailedPreconditionError(
                f"{field}: not served with data parallelism (--nproc); use the run's loss",
                field=field,
                reason="UNSUPPORTED_IN_MODE",
            )

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
        seed: int | None = None,
        on_batched: OnBatched | None = None,
    ) -> GradientResult:
        """`weigh(version)` gives the factor for what is added to .grad (async mode's
        staleness check and down-weighting), called under the lock when the batch runs, not
        for a replay; the loss and the returned gradients are the batch's own. With
        `return_gradients`, a response over `max_response_bytes` is refused before any work.
        `batch_loss`: this batch's own loss and weights (server/models/losses.py); None: the run's;
        `seed`: its forward's random ops (randomness.py); `on_batched`: told how it ran when
        `shared_compute` ran it in a cross-run batch."""
        check_request_id(request_id)
        self.local_only("seed", when=seed is not None)
        state = self._state
        function: LossFunction | None = None
        if batch_loss is None:
            batch_size = self.model.check_batch(inputs, targets)
        else:
            self.local_only("loss")
            batch_size, function = prepare(self.model, inputs, targets, batch_loss)
        if return_gradients and max_response_bytes is not None:
            check_names(state.named, (), max_response_bytes, size_field="return_gradients")

        def run() -> GradientResult:
            weight = 1.0 if weigh is None else weigh(state.version)
            # Other runs' batches on the same base may share its forward (shared_compute.py).
            shared = self.shared_compute if seed is None else None
            add = functools.partial(self._add, batch_size=batch_size, weight=weight)
            batch = (inputs, targets)
            computed = accumulate_shared(state, shared, batch, function, add, on_batched=on_batched)
            # The batch's own gradients (to return, or to weigh) need autograd.grad.
            plain = weight == 1.0 and function is None and seed is None
            if computed is None and self._optimistic and plain and not return_gradients:
                fast = self._optimistic_runs.accumulate_optimistically(inputs, targets, batch_size)
                computed = None if fast is None else (fast, ())
            if computed is None:
                with seeded(seed, state.device):
                    computed = self._accumulate(inputs, targets, batch_size, weight, function)
            loss, gradients = computed
            own: dict[str, torch.Tensor] = {}
            if return_gradients:
                own = {
                    name: (g if g is not None else torch.zeros_like(p)).cpu()
                    for (name, p), g in zip(state.named.items(), gradients, strict=True)
                }
            return GradientResult(
                loss=loss,
                batch_size=batch_size,
                accumulated_batches=state.accumulated_batches,
                accumulated_samples=state.accumulated_samples,
                model_version=state.version,
                gradients=own,
                logprobs=answered_logprobs(function),
            )

        with state.lock:
            # The loss joins the fingerprint only when chosen: older windows stay valid.
            chosen: tuple[object, ...] = () if batch_loss is None else (batch_loss,)
            chosen += () if seed is None else (("seed", seed),)
            return state.request_ids.remembered(
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
        state = self._state
        with state.lock:
            return state.request_ids.remembered(
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
        self.local_only("seed", when=any(step.seed is not None for step in steps))
        state = self._state
        sizes = check_steps(self.model, steps, state.smallest_batch, self.optimizer)
        with state.lock:
            return state.request_ids.remembered(
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
        """Train's steps (and a dataset pass's, pass_runs.py) with the lock held (cadence.py)."""
        optimistic = self._optimistic_runs.train_optimistically if self._optimistic else None
        runner = StepRunner(
            (lambda chosen, sizes: optimistic(chosen, sizes, norms=norms)) if optimistic else None,
            self._run_step,
            lambda: self.version,
            self._transfer.state_copy,
        )
        return run_steps(steps, sizes, where, note, runner, cadence=self.update_cadence)

    def _run_step(self, step: TrainStep, sizes: list[int]) -> StepResult:
        batches = enumerate(zip(step.batches, sizes, strict=True))
        losses = tuple(
            self._accumulate_seeded(step, i, batch, size) for i, (batch, size) in batches
        )
        if not step.apply_update:
            return StepResult(losses, self._state.version, self._state.accumulated_batches)
        settings = (step.reduction, step.expected_version, step.hyperparameters)
        update = self._step(step.learning_rate, *settings, step.max_grad_norm)
        done = (update.model_version, 0, True, update.applied_batches, update.gradient_norm)
        return StepResult(losses, *done, update.clipped)

    def _accumulate_seeded(self, step: TrainStep, i: int, batch: Batch, size: int) -> float:
        """Batch i of `step`, its forward seeded with the step's seed + i (when it has one)."""
        with seeded(None if step.seed is None else step.seed + i, self._state.device):
            return self._accumulate(*batch, size, 1.0, batch_loss_function(self.model, step, i))[0]

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
        state = self._state
        with state.buffer_keeper.kept():
            if loss_function is None:
                loss, gradients = self.compute_strategy.compute(inputs, targets, weight)
            else:  # per-batch losses are local_only
                loss, gradients = local_gradients(state, inputs, targets, loss_function)
            self._add(gradients, batch_size, weight)
        return loss, gradients

    def _add(self, gradients: Gradients, batch_size: int, weight: float) -> None:
        state = self._state
        add_gradients(state.named, gradients, weight, version=state.version)
        state.accumulated_batches += 1
        state.accumulated_samples += batch_size

    def _step(
        self,
        learning_rate: float,
        reduction: Reduction,
        expected_version: int | None,
        hyperparameters: Hyperparameters = NO_OVERRIDES,
        max_grad_norm: float | None = None,
    ) -> UpdateResult:
        """One optimizer step with the accumulated gradients, then the strategy's part (the
        other ranks take the same step). Call with the lock held."""
        state = self._state
        state.check_version(expected_version)
        if state.accumulated_batches == 0:
            raise FailedPreconditionError(
                "nothing to apply: no gradients accumulated since the last update",
                reason="NOTHING_ACCUMULATED",
            )
        norm, clipped = self._rollback.step(
            learning_rate,
            reduction,
            state.accumulated_batches,
            hyperparameters,
            max_grad_norm,
            known_norm=self._optimistic_runs.take_known_norm(),
        )
        self.optimizer.zero_grad()
        batches, samples = state.accumulated_batches, state.accumulated_samples
        result = UpdateResult(state.version + 1, batches, samples, norm, clipped=clipped)
        state.version += 1
        state.accumulated_batches = 0
        state.accumulated_samples = 0
        self.compute_strategy.stepped(learning_rate, reduction, hyperparameters, max_grad_norm)
        return result

    def _drop_gradients(self) -> None:
        """Then the strategy's part (the other ranks take rank 0's parameters)."""
        state = self._state
        for parameter in state.parameters:
            parameter.grad = None
        state.accumulated_batches = 0
        state.accumulated_samples = 0
        self.compute_strategy.dropped()

    # -- what the collaborators answer for the store (delegated in __init__) ----------------

    def compute_outputs(
        self, inputs: torch.Tensor, *, request_id: str = "", bounds: HandleBounds | None = None
    ) -> OutputsResult:
        check_request_id(request_id)
        self.local_only("inputs")
        return self._outputs.compute_outputs(inputs, request_id=request_id, bounds=bounds)
