"""Where the parameters live: the model, its accumulated gradients, its version, and one lock.

Plain torch, no protobuf. The rule for concurrent calls: every ComputeGradients that returns
has added its batch's gradients; an update applies everything that finished before it took the
lock; a rejected call changes nothing (checks run before any state is touched). The pieces live
beside it: accumulation.py (one batch into .grad), updates.py (the step's arithmetic),
train_steps.py (Train's checks), parameter_access.py (parameter checks), graph_trace.py
(DescribeGraph), request_ids.py (replays), state_transfer.py (checkpoints in and out).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from gradserve.errors import FailedPreconditionError, VersionConflictError
from gradserve.server.accumulation import Gradients, add_gradients, batch_gradients
from gradserve.server.buffers import BufferKeeper, model_buffers, smallest_training_batch
from gradserve.server.error_scope import scoped
from gradserve.server.graph import effective_max_nodes
from gradserve.server.graph_trace import trace_graph
from gradserve.server.losses import available, batch_loss_function, prepare
from gradserve.server.models import LossFunction, Model
from gradserve.server.optimizers import Optimizer
from gradserve.server.output_handles import OutputHandles
from gradserve.server.output_passes import OutputPasses
from gradserve.server.parameter_access import check_names, check_values
from gradserve.server.request_ids import DEFAULT_WINDOW_BYTES, RequestIdWindow, check_request_id
from gradserve.server.state_transfer import StateTransfer
from gradserve.server.tracing import traced
from gradserve.server.train_steps import check_steps
from gradserve.server.updates import StepRollback, check_learning_rate
from gradserve.types import (
    BatchLoss,
    DiscardResult,
    EvaluationResult,
    GradientResult,
    GraphDescription,
    ModelInfo,
    Reduction,
    SetResult,
    StepResult,
    TensorSpec,
    TrainResult,
    TrainStep,
    UpdateResult,
)

T = TypeVar("T")
_NOTE = (
    "{index} of {count} steps of this request were applied before it; batches of this step "
    "that ran before the failure stay accumulated, as with the unary calls"
)


class ParameterStore(StateTransfer, OutputPasses):
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
        `batch_loss`: this batch's own loss and weights (server/losses.py); None: the run's."""
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
    ) -> UpdateResult:
        check_request_id(request_id)
        check_learning_rate(learning_rate)
        with self._lock:
            return self._request_ids.remembered(
                "apply_update",
                request_id,
                lambda: self._step(learning_rate, reduction, expected_version),
                learning_rate,
                reduction,
                expected_version,
            )

    @traced("gradserve.train")
    def train(self, steps: Sequence[TrainStep], *, request_id: str = "") -> TrainResult:
        """Run steps in order: each step's batches as compute_gradients, then its update as
        apply_update. Everything is checked before anything runs; a step that fails while
        running raises with the number of steps already applied in the message."""
        check_request_id(request_id)
        sizes = check_steps(self.model, steps, self._smallest_batch)

        def run() -> TrainResult:
            results = []
            for index, step in enumerate(steps):
                note = _NOTE.format(index=index, count=len(steps))
                with scoped(f"steps[{index}]", note=note):
                    results.append(self._run_step(step, sizes[index]))
            return TrainResult(tuple(results))

        with self._lock:
            return self._request_ids.remembered("train", request_id, run, tuple(steps))

    def _run_step(self, step: TrainStep, sizes: list[int]) -> StepResult:
        losses = tuple(
            self._accumulate(inputs, targets, size, 1.0, batch_loss_function(self.model, step, i))[
                0
            ]
            for i, ((inputs, targets), size) in enumerate(zip(step.batches, sizes, strict=True))
        )
        if not step.apply_update:
            return StepResult(losses, self.version, self.accumulated_batches)
        update = self._step(step.learning_rate, step.reduction, step.expected_version)
        return StepResult(
            losses, update.model_version, 0, True, update.applied_batches, update.gradient_norm
        )

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
        self, learning_rate: float, reduction: Reduction, expected_version: int | None
    ) -> UpdateResult:
        """One optimizer step with the accumulated gradients. Call with the lock held."""
        self._check_version(expected_version)
        if self.accumulated_batches == 0:
            raise FailedPreconditionError(
                "nothing to apply: no gradients accumulated since the last update",
                reason="NOTHING_ACCUMULATED",
            )
        norm = self._rollback.step(learning_rate, reduction, self.accumulated_batches)
        self.optimizer.zero_grad()
        result = UpdateResult(
            self.version + 1, self.accumulated_batches, self.accumulated_samples, norm
        )
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

    # -- evaluation, parameters, the graph -------------------------------------------------

    def parameter_bytes(self) -> int:
        """Bytes of the model's parameters and buffers (what a run costs in memory)."""
        module = self.model.module
        tensors = [*module.parameters(), *module.buffers()]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    @traced("gradserve.evaluate")
    def evaluate(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        *,
        return_predictions: bool = False,
    ) -> EvaluationResult:
        batch_size = self.model.check_batch(inputs, targets)
        inputs = inputs.to(self.device)
        targets = None if targets is None else targets.to(self.device)
        with self._lock, torch.no_grad():
            self.model.module.eval()
            predictions = self.model.module(inputs)
            loss = None
            if targets is not None:
                loss = self.model.loss.function(predictions, targets).item()
            return EvaluationResult(
                loss, batch_size, self.version, predictions.cpu() if return_predictions else None
            )

    def read_parameters(
        self,
        names: Sequence[str],
        reader: Callable[[str, torch.Tensor], T],
        *,
        max_bytes: int | None = None,
    ) -> tuple[int, list[T]]:
        """Call reader(name, value) for the named parameters (all when names is empty) under
        the lock, so a reader sees one version without copying; return (version, results).
        Names are checked, and with `max_bytes` the encoded size too, before anything is read."""
        selected = check_names(self._named, names, max_bytes)
        with self._lock:
            return self.version, [
                reader(name, self._named[name].detach().cpu()) for name in selected
            ]

    @traced("gradserve.set_parameters")
    def set_parameters(
        self,
        values: Sequence[tuple[str, torch.Tensor]],
        *,
        expected_version: int | None = None,
        request_id: str = "",
    ) -> SetResult:
        check_request_id(request_id)
        check_values(self._named, values)

        def run() -> SetResult:
            self._check_version(expected_version)
            with torch.no_grad():
                for name, value in values:
                    self._named[name].copy_(value)
            self._drop_gradients()
            self.version += 1
            return SetResult(model_version=self.version)

        with self._lock:
            return self._request_ids.remembered(
                "set_parameters", request_id, run, tuple(values), expected_version
            )

    def info(self) -> ModelInfo:
        model = self.model
        version, batches, samples = self.snapshot()
        return ModelInfo(
            model=model.name,
            model_spec=model.spec,
            parameters=tuple(
                TensorSpec(name, p.dtype, tuple(p.shape)) for name, p in self._named.items()
            ),
            parameter_count=sum(parameter.numel() for parameter in self._parameters),
            input=TensorSpec("inputs", model.input.dtype, model.input.shape),
            target=TensorSpec("targets", model.target.dtype, model.target.shape),
            loss=model.loss.name,
            losses=available(model),
            optimizer=self.optimizer.description,
            model_version=version,
            accumulated_batches=batches,
            accumulated_samples=samples,
        )

    def gradients(self) -> dict[str, torch.Tensor | None]:
        """A copy of the accumulated gradients (for tests and checkpoints)."""
        with self._lock:
            return {
                name: None if p.grad is None else p.grad.detach().to("cpu", copy=True)
                for name, p in self._named.items()
            }

    def describe_graph(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        max_nodes: int = 0,
        return_gradients: bool = False,
    ) -> GraphDescription:
        """The autograd graph ComputeGradients would build for this batch, changing nothing."""
        cap = effective_max_nodes(max_nodes)
        batch_size = self.model.check_batch(inputs, targets)
        with self._lock:
            graph = trace_graph(
                self.model,
                self._named,
                self._parameters,
                inputs,
                targets,
                max_nodes=cap,
                return_gradients=return_gradients,
            )
            return GraphDescription(graph, batch_size, self.version, cap)
