"""Where the parameters live: the model, its accumulated gradients, its version, and one lock.

Plain torch, no protobuf. The rule for concurrent calls: every ComputeGradients that returns
has added its batch's gradients; an update applies everything that finished before it took the
lock; a rejected call changes nothing (checks run before any state is touched).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar, cast

import torch

from gradserve.errors import (
    FailedPreconditionError,
    GradserveError,
    InvalidArgumentError,
    ResourceExhaustedError,
    VersionConflictError,
)
from gradserve.server.graph import ConstantUses, Graph, build_graph, effective_max_nodes
from gradserve.server.models import Model, all_finite
from gradserve.server.optimizers import Optimizer
from gradserve.server.request_ids import RequestIdWindow, check_request_id
from gradserve.server.tracing import traced

T = TypeVar("T")


class Reduction(Enum):
    SUM = "sum"
    MEAN = "mean"


@dataclass(frozen=True, slots=True)
class GradientResult:
    loss: float
    batch_size: int
    accumulated_batches: int
    accumulated_samples: int
    model_version: int
    # This batch's own gradients, by parameter name; empty unless asked for.
    gradients: tuple[tuple[str, torch.Tensor], ...] = ()
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class UpdateResult:
    model_version: int
    applied_batches: int
    applied_samples: int
    gradient_norm: float
    replayed: bool = False


@dataclass(frozen=True)
class EvaluationResult:
    loss: float | None
    batch_size: int
    model_version: int
    predictions: torch.Tensor | None


@dataclass(frozen=True)
class DiscardResult:
    discarded_batches: int
    model_version: int


@dataclass(frozen=True, slots=True)
class SetResult:
    model_version: int
    replayed: bool = False


@dataclass(frozen=True)
class ParameterInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    model: str
    model_spec: str
    parameters: tuple[ParameterInfo, ...]
    parameter_count: int
    input_dtype: torch.dtype
    input_shape: tuple[int, ...]
    target_dtype: torch.dtype
    target_shape: tuple[int, ...]
    loss: str
    optimizer: str
    model_version: int
    accumulated_batches: int
    accumulated_samples: int


@dataclass(frozen=True)
class GraphDescription:
    graph: Graph
    batch_size: int
    model_version: int
    # The node cap the call ran under.
    max_nodes: int


# One Train request runs under the lock from start to end: bound how long that can be.
MAX_BATCHES_PER_REQUEST = 100_000


@dataclass(frozen=True)
class TrainStep:
    """Batches to accumulate, then optionally an update (see the Train RPC)."""

    batches: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    apply_update: bool = False
    learning_rate: float = 0.0
    reduction: Reduction = Reduction.SUM
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class StepOutcome:
    losses: tuple[float, ...]
    model_version: int
    accumulated_batches: int
    applied: bool = False
    applied_batches: int = 0
    gradient_norm: float = 0.0


@dataclass(frozen=True, slots=True)
class TrainResult:
    steps: tuple[StepOutcome, ...]
    replayed: bool = False


def check_learning_rate(learning_rate: float) -> None:
    if not math.isfinite(learning_rate) or learning_rate < 0:
        raise InvalidArgumentError(
            f"learning_rate: {learning_rate}, expected a finite number >= 0",
            field="learning_rate",
        )


class ParameterStore:
    """One model's parameters, gradients and version, safe to call from many threads."""

    def __init__(self, model: Model, optimizer: Optimizer, request_id_window: int = 1024) -> None:
        self.model = model
        self.optimizer = optimizer
        self._named = dict(model.module.named_parameters())
        self._parameters = list(self._named.values())
        # The model's device (--device); requests move there once, results come back to CPU.
        self.device = self._parameters[0].device if self._parameters else torch.device("cpu")
        self._lock = threading.Lock()
        self._request_ids = RequestIdWindow(request_id_window)
        self.version = 0
        self.accumulated_batches = 0
        self.accumulated_samples = 0

    # -- gradients -----------------------------------------------------------------------

    @traced("gradserve.compute_gradients")
    def compute_gradients(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        request_id: str = "",
        return_gradients: bool = False,
        weight: float = 1.0,
    ) -> GradientResult:
        """`weight` scales what is added to .grad (async mode's down-weighting of stale
        contributions); the loss and the returned gradients are the batch's own."""
        check_request_id(request_id)
        batch_size = self.model.check_batch(inputs, targets)
        with self._lock:
            replay = self._request_ids.get("compute_gradients", request_id)
            if replay is not None:
                return cast(GradientResult, dataclasses.replace(replay, replayed=True))
            loss_value, gradients = self._accumulate(inputs, targets, batch_size, weight)
            own: tuple[tuple[str, torch.Tensor], ...] = ()
            if return_gradients:
                own = tuple(
                    (
                        name,
                        (gradient if gradient is not None else torch.zeros_like(parameter)).cpu(),
                    )
                    for (name, parameter), gradient in zip(
                        self._named.items(), gradients, strict=True
                    )
                )
            result = GradientResult(
                loss=loss_value,
                batch_size=batch_size,
                accumulated_batches=self.accumulated_batches,
                accumulated_samples=self.accumulated_samples,
                model_version=self.version,
                gradients=own,
            )
            self._request_ids.put("compute_gradients", request_id, result)
            return result

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
            replay = self._request_ids.get("apply_update", request_id)
            if replay is not None:
                return cast(UpdateResult, dataclasses.replace(replay, replayed=True))
            result = self._step(learning_rate, reduction, expected_version)
            self._request_ids.put("apply_update", request_id, result)
            return result

    @traced("gradserve.train")
    def train(self, steps: Sequence[TrainStep], *, request_id: str = "") -> TrainResult:
        """Run steps in order: each step's batches as compute_gradients, then its update as
        apply_update. Everything is checked before anything runs; a step that fails while
        running raises with the number of steps already applied in the message."""
        check_request_id(request_id)
        sizes = self._check_steps(steps)
        with self._lock:
            replay = self._request_ids.get("train", request_id)
            if replay is not None:
                return cast(TrainResult, dataclasses.replace(replay, replayed=True))
            outcomes: list[StepOutcome] = []
            for index, step in enumerate(steps):
                try:
                    outcomes.append(self._run_step(step, sizes[index]))
                except GradserveError as error:
                    error.message = (
                        f"steps[{index}]: {error.message} ({index} of {len(steps)} steps of "
                        "this request were applied before it; batches of this step that ran "
                        "before the failure stay accumulated, as with the unary calls)"
                    )
                    error.args = (error.message,)
                    raise
            result = TrainResult(tuple(outcomes))
            self._request_ids.put("train", request_id, result)
            return result

    def _check_steps(self, steps: Sequence[TrainStep]) -> list[list[int]]:
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
            step_sizes = []
            for batch_index, (inputs, targets) in enumerate(step.batches):
                try:
                    step_sizes.append(self.model.check_batch(inputs, targets))
                except GradserveError as error:
                    where = f"steps[{index}].batches[{batch_index}]"
                    error.field = f"{where}.{error.field}" if error.field else where
                    error.message = f"{where}.{error.message}"
                    error.args = (error.message,)
                    raise
            if step.apply_update:
                try:
                    check_learning_rate(step.learning_rate)
                except GradserveError as error:
                    error.field = f"steps[{index}].learning_rate"
                    error.message = f"steps[{index}].{error.message}"
                    error.args = (error.message,)
                    raise
            sizes.append(step_sizes)
        return sizes

    def _run_step(self, step: TrainStep, sizes: list[int]) -> StepOutcome:
        losses = tuple(
            self._accumulate(inputs, targets, size)[0]
            for (inputs, targets), size in zip(step.batches, sizes, strict=True)
        )
        if not step.apply_update:
            return StepOutcome(losses, self.version, self.accumulated_batches)
        update = self._step(step.learning_rate, step.reduction, step.expected_version)
        return StepOutcome(
            losses,
            update.model_version,
            0,
            applied=True,
            applied_batches=update.applied_batches,
            gradient_norm=update.gradient_norm,
        )

    def _accumulate(
        self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, weight: float = 1.0
    ) -> tuple[float, tuple[torch.Tensor | None, ...]]:
        """Forward, loss, gradients, and add them to .grad. Call with the lock held."""
        if inputs.device != self.device:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
        module = self.model.module
        if not module.training:  # Module.train() walks every submodule: skip it when set
            module.train()
        loss = self.model.loss.function(self.model.module(inputs), targets)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FailedPreconditionError(
                f"inputs: the loss is {loss_value} for this batch at model version "
                f"{self.version}; nothing was accumulated",
                field="inputs",
            )
        # autograd.grad rather than backward(): the batch's gradients are checked before
        # anything is added, and adding them below is the same arithmetic backward() does.
        gradients = torch.autograd.grad(loss, self._parameters, allow_unused=True)
        for name, gradient in zip(self._named, gradients, strict=True):
            if gradient is not None and not all_finite(gradient):
                raise FailedPreconditionError(
                    f"inputs: the gradient of {name} is not finite for this batch at "
                    f"model version {self.version}; nothing was accumulated",
                    field="inputs",
                )
        with torch.no_grad():
            for parameter, gradient in zip(self._parameters, gradients, strict=True):
                if gradient is None:
                    continue
                # A down-weighted (stale) contribution adds weight * gradient.
                added = gradient if weight == 1.0 else gradient * weight
                if parameter.grad is None:
                    parameter.grad = added.clone()
                else:
                    parameter.grad += added
        self.accumulated_batches += 1
        self.accumulated_samples += batch_size
        return loss_value, gradients

    def _step(
        self, learning_rate: float, reduction: Reduction, expected_version: int | None
    ) -> UpdateResult:
        """One optimizer step with the accumulated gradients. Call with the lock held."""
        self._check_version(expected_version)
        if self.accumulated_batches == 0:
            raise FailedPreconditionError(
                "nothing to apply: no gradients accumulated since the last update",
                field="learning_rate",
            )
        with torch.no_grad():
            if reduction is Reduction.MEAN and self.accumulated_batches > 1:
                for parameter in self._parameters:
                    if parameter.grad is not None:
                        parameter.grad /= self.accumulated_batches
            norm = _total_norm(self._parameters)
        self.optimizer.step(learning_rate)
        self.optimizer.zero_grad()
        result = UpdateResult(
            model_version=self.version + 1,
            applied_batches=self.accumulated_batches,
            applied_samples=self.accumulated_samples,
            gradient_norm=norm,
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

    # -- evaluation and parameters -------------------------------------------------------

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
                loss=loss,
                batch_size=batch_size,
                model_version=self.version,
                predictions=predictions.cpu() if return_predictions else None,
            )

    def read_parameters(
        self, names: Sequence[str], reader: Callable[[str, torch.Tensor], T]
    ) -> tuple[int, list[T]]:
        """Call reader(name, value) for the named parameters (all when names is empty) under
        the lock, so a reader sees one version without copying; return (version, results)."""
        for index, name in enumerate(names):
            if name not in self._named:
                raise InvalidArgumentError(
                    f"names[{index}]: no parameter {name!r}; the model has "
                    f"{', '.join(self._named)}",
                    field=f"names[{index}]",
                )
        selected = names or list(self._named)
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
        self._check_values(values)
        with self._lock:
            replay = self._request_ids.get("set_parameters", request_id)
            if replay is not None:
                return cast(SetResult, dataclasses.replace(replay, replayed=True))
            self._check_version(expected_version)
            with torch.no_grad():
                for name, value in values:
                    self._named[name].copy_(value)
            self._drop_gradients()
            self.version += 1
            result = SetResult(model_version=self.version)
            self._request_ids.put("set_parameters", request_id, result)
            return result

    def info(self) -> ModelInfo:
        model = self.model
        parameters = tuple(
            ParameterInfo(name, parameter.dtype, tuple(parameter.shape))
            for name, parameter in self._named.items()
        )
        with self._lock:
            version, batches, samples = (
                self.version,
                self.accumulated_batches,
                self.accumulated_samples,
            )
        return ModelInfo(
            model=model.name,
            model_spec=model.spec,
            parameters=parameters,
            parameter_count=sum(parameter.numel() for parameter in self._parameters),
            input_dtype=model.input.dtype,
            input_shape=model.input.shape,
            target_dtype=model.target.dtype,
            target_shape=model.target.shape,
            loss=model.loss.name,
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

    # -- checkpoints ---------------------------------------------------------------------

    def export_state(self) -> StoreState:
        """A consistent copy of everything a checkpoint holds, taken under the lock."""
        with self._lock:
            return StoreState(
                version=self.version,
                accumulated_batches=self.accumulated_batches,
                accumulated_samples=self.accumulated_samples,
                parameters={n: p.detach().clone() for n, p in self._named.items()},
                gradients={
                    n: p.grad.detach().clone() for n, p in self._named.items() if p.grad is not None
                },
                # deepcopy: torch.optim hands out its live state tensors, stepped in place later.
                optimizer=copy.deepcopy(self.optimizer.state_dict()),
                request_ids=tuple(
                    (method, request_id, result)
                    for (method, request_id), result in self._request_ids.items()
                ),
            )

    def restore_state(self, state: StoreState) -> None:
        """Put a checkpoint's state back: parameters, .grad, optimizer, version, counts, ids."""
        for name, value in state.parameters.items():
            parameter = self._named.get(name)
            if (
                parameter is None
                or value.shape != parameter.shape
                or value.dtype != parameter.dtype
            ):
                raise InvalidArgumentError(
                    f"checkpoint: parameter {name!r} {value.dtype} {list(value.shape)} does not "
                    "match the model",
                    field="checkpoint",
                )
        if set(state.parameters) != set(self._named):
            raise InvalidArgumentError(
                f"checkpoint: parameters {sorted(state.parameters)}, the model has "
                f"{sorted(self._named)}",
                field="checkpoint",
            )
        with self._lock, torch.no_grad():
            for name, parameter in self._named.items():
                parameter.copy_(state.parameters[name])
                gradient = state.gradients.get(name)
                parameter.grad = None if gradient is None else gradient.clone()
            self.optimizer.load_state_dict(copy.deepcopy(state.optimizer))
            self.version = state.version
            self.accumulated_batches = state.accumulated_batches
            self.accumulated_samples = state.accumulated_samples
            self._request_ids = RequestIdWindow(self._request_ids.capacity)
            for method, request_id, result in state.request_ids:
                self._request_ids.put(method, request_id, result)

    # -- internals -----------------------------------------------------------------------

    def _check_version(self, expected_version: int | None) -> None:
        if expected_version is not None and expected_version != self.version:
            raise VersionConflictError(
                f"expected_version: {expected_version}, but the model is at version "
                f"{self.version}; nothing was applied",
                field="expected_version",
            )

    def _check_values(self, values: Sequence[tuple[str, torch.Tensor]]) -> None:
        if not values:
            raise InvalidArgumentError("parameters: no parameters given", field="parameters")
        seen: set[str] = set()
        for index, (name, value) in enumerate(values):
            field = f"parameters[{index}]"
            parameter = self._named.get(name)
            if parameter is None:
                raise InvalidArgumentError(
                    f"{field}.name: no parameter {name!r}; the model has {', '.join(self._named)}",
                    field=f"{field}.name",
                )
            if name in seen:
                raise InvalidArgumentError(
                    f"{field}.name: {name!r} is given twice", field=f"{field}.name"
                )
            seen.add(name)
            if value.dtype != parameter.dtype:
                raise InvalidArgumentError(
                    f"{field}.dtype: {value.dtype} for {name!r}, expected {parameter.dtype}",
                    field=f"{field}.dtype",
                )
            if value.shape != parameter.shape:
                raise InvalidArgumentError(
                    f"{field}.shape: {list(value.shape)} for {name!r}, "
                    f"expected {list(parameter.shape)}",
                    field=f"{field}.shape",
                )
            if value.is_floating_point() and not all_finite(value):
                raise InvalidArgumentError(
                    f"{field}.data: {name!r} contains NaN or Inf", field=f"{field}.data"
                )

    def _drop_gradients(self) -> None:
        for parameter in self._parameters:
            parameter.grad = None
        self.accumulated_batches = 0
        self.accumulated_samples = 0

    # -- the graph -----------------------------------------------------------------------

    def describe_graph(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        max_nodes: int = 0,
        return_gradients: bool = False,
    ) -> GraphDescription:
        """The autograd graph ComputeGradients would build for this batch, changing nothing.

        Under the lock and in train mode, like ComputeGradients; the optional leaf gradients
        come from torch.autograd.grad (never backward()), so no .grad, version, accumulator,
        buffer, RNG state or train/eval mode is left changed."""
        cap = effective_max_nodes(max_nodes)
        batch_size = self.model.check_batch(inputs, targets)
        module = self.model.module
        with self._lock, torch.random.fork_rng(devices=[]):
            was_training = module.training
            buffers = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
            try:
                module.train()
                uses = ConstantUses({"inputs": inputs, "targets": targets})
                with uses:
                    loss = self.model.loss.function(module(inputs), targets)
                graph = build_graph(
                    loss,
                    self._named,
                    max_nodes=cap,
                    constants={"inputs": inputs, "targets": targets},
                    constant_uses=uses.uses,
                )
                if return_gradients:
                    gradients = torch.autograd.grad(loss, self._parameters, allow_unused=True)
                    graph = graph.with_gradients(
                        {
                            name: g if g is not None else torch.zeros_like(p)
                            for (name, p), g in zip(self._named.items(), gradients, strict=True)
                        }
                    )
            finally:
                module.train(was_training)
                with torch.no_grad():
                    for buffer, saved in buffers:
                        buffer.copy_(saved)
            return GraphDescription(
                graph=graph, batch_size=batch_size, model_version=self.version, max_nodes=cap
            )


def _total_norm(parameters: Sequence[torch.nn.Parameter]) -> float:
    # Each gradient's norm reduced in float64 (one op each, no float64 copy), then combined.
    norms = [
        torch.linalg.vector_norm(p.grad, dtype=torch.float64).item()
        for p in parameters
        if p.grad is not None
    ]
    return math.sqrt(sum(norm * norm for norm in norms))


@dataclass(frozen=True)
class StoreState:
    """Everything a checkpoint holds, as plain torch and Python values."""

    version: int
    accumulated_batches: int
    accumulated_samples: int
    parameters: dict[str, torch.Tensor]
    # Only the parameters whose .grad is set.
    gradients: dict[str, torch.Tensor]
    # The optimizer's state_dict (tensors and plain values).
    optimizer: dict[str, Any]
    # The request-id window, oldest first: (method, request_id, result).
    request_ids: tuple[tuple[str, str, Any], ...]
