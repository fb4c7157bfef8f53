"""How many workers share one model: the object the servicer calls for everything it serves.

A coordinator stands between the servicer and the ParameterStore and records each call's
result in the metrics, once. Three modes (CoordinationConfig.mode):
- direct (this module): each call acts at once, and Train runs its steps in the store.
- sync (sync_coordinator.py): ApplyUpdate is a barrier; one MEAN update per N contributions.
- async (async_coordinator.py): each update steps at once; stale contributions are bounded.
Sync and async decide per ComputeGradients/ApplyUpdate call, so they refuse Train (a stream of
steps would bypass them) with FAILED_PRECONDITION naming the field "mode".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from gradserve.errors import FailedPreconditionError
from gradserve.graph_types import GraphDescription
from gradserve.types import (
    BatchLoss,
    DiscardResult,
    EvaluationResult,
    GradientResult,
    ModelInfo,
    OutputsResult,
    Reduction,
    SetResult,
    TrainResult,
    TrainStep,
    UpdateResult,
)

from ..checkpoints.durability import GroupCommit
from ..config import CoordinationConfig, LimitsConfig
from ..metrics import RunMetrics, ServerMetrics
from ..models.hyperparameters import NO_OVERRIDES, Hyperparameters
from ..store.output_handles import HandleBounds
from ..store.parameter_store import ParameterStore
from ..store.pass_runs import PassSteps

T = TypeVar("T")


class DirectCoordinator:
    """Every call goes straight to the store: one worker, or workers that coordinate themselves."""

    def __init__(
        self,
        store: ParameterStore,
        metrics: RunMetrics | None = None,
        limits: LimitsConfig | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics if metrics is not None else ServerMetrics().for_run("", store)
        self.limits = limits if limits is not None else LimitsConfig()
        # --durability sync (server/checkpoints/durability.py): changes wait for their checkpoint.
        self.durability: GroupCommit | None = None

    def durable(self, result: T) -> T:
        """`result` once the change behind it is on disk (a no-op unless --durability sync).
        Called after the store's lock is released, so waiters share one save."""
        if self.durability is not None:
            self.durability.wait_durable()
        return result

    def compute_gradients(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        request_id: str = "",
        return_gradients: bool = False,
        based_on_version: int | None = None,
        batch_loss: BatchLoss | None = None,
    ) -> GradientResult:
        result = self.store.compute_gradients(
            inputs,
            targets,
            request_id=request_id,
            return_gradients=return_gradients,
            max_response_bytes=self.limits.max_message_bytes,
            batch_loss=batch_loss,
        )
        self.metrics.record_gradients(result)
        return result

    def compute_outputs(self, inputs: torch.Tensor, *, request_id: str = "") -> OutputsResult:
        bounds = HandleBounds.of(self.limits)
        return self.store.compute_outputs(inputs, request_id=request_id, bounds=bounds)

    def backward_outputs(
        self,
        handle: str,
        output_gradients: torch.Tensor,
        loss: float,
        *,
        request_id: str = "",
        based_on_version: int | None = None,
    ) -> GradientResult:
        """A contribution like a ComputeGradients batch (sync rounds count it as one)."""
        result = self.store.backward_outputs(handle, output_gradients, loss, request_id=request_id)
        self.metrics.record_gradients(result)
        return result

    def apply_update(
        self,
        learning_rate: float,
        *,
        reduction: Reduction = Reduction.SUM,
        expected_version: int | None = None,
        request_id: str = "",
        time_remaining: float | None = None,
        hyperparameters: Hyperparameters = NO_OVERRIDES,
        max_grad_norm: float | None = None,
    ) -> UpdateResult:
        """`hyperparameters`, `max_grad_norm`: this update's optimizer overrides and
        clipping (server/store/updates.py)."""
        result = self.store.apply_update(
            learning_rate,
            reduction=reduction,
            expected_version=expected_version,
            request_id=request_id,
            hyperparameters=hyperparameters,
            max_grad_norm=max_grad_norm,
        )
        self.metrics.record_update(result)
        return self.durable(result)

    def train(self, steps: Sequence[TrainStep], *, request_id: str = "") -> TrainResult:
        result = self.store.train(steps, request_id=request_id)
        samples = sum(int(inputs.shape[0]) for step in steps for inputs, _ in step.batches)
        self.metrics.record_train(result, samples)
        return self.durable(result) if any(step.applied for step in result.steps) else result

    def train_pass(self, expanded: PassSteps, *, request_id: str = "") -> TrainResult:
        """A dataset pass (server/store/pass_runs.py), recorded as the same steps would be."""
        result = self.store.train_pass(expanded, request_id=request_id)
        samples = sum(int(step.batches[0][0].shape[0]) for step in expanded.steps)
        norms = expanded.gradient_norms or expanded.steps[0].max_grad_norm is not None
        self.metrics.record_pass(result, samples, norms=norms)
        return self.durable(result) if result.steps else result

    def evaluate(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        *,
        return_predictions: bool = False,
    ) -> EvaluationResult:
        return self.store.evaluate(inputs, targets, return_predictions=return_predictions)

    def read_parameters(
        self,
        names: Sequence[str],
        reader: Callable[[str, torch.Tensor], T],
        *,
        max_bytes: int | None = None,
        include_buffers: bool = False,
    ) -> tuple[int, list[T]]:
        return self.store.read_parameters(
            names, reader, max_bytes=max_bytes, include_buffers=include_buffers
        )

    def encode_parameters(
        self,
        names: Sequence[str],
        encode: Callable[[list[tuple[str, torch.Tensor]], int], T],
        *,
        max_bytes: int | None = None,
        include_buffers: bool = False,
    ) -> T:
        return self.store.encode_parameters(
            names, encode, max_bytes=max_bytes, include_buffers=include_buffers
        )

    def snapshot_parameters(
        self, names: Sequence[str], *, include_buffers: bool = False
    ) -> tuple[int, list[tuple[str, torch.Tensor]]]:
        return self.store.snapshot_parameters(names, include_buffers=include_buffers)

    def set_parameters(
        self,
        values: Sequence[tuple[str, torch.Tensor]],
        *,
        expected_version: int | None = None,
        request_id: str = "",
        method: str = "SetParameters",
        values_digest: str | None = None,
    ) -> SetResult:
        """`method`: the RPC that carried the values (SetParameters or UploadParameters);
        `values_digest`: see ParameterStore.set_parameters."""
        result = self.store.set_parameters(
            values,
            expected_version=expected_version,
            request_id=request_id,
            values_digest=values_digest,
        )
        self.metrics.record_set(result, method)
        return self.durable(result)

    def discard_gradients(self) -> DiscardResult:
        return self.store.discard_gradients()

    def info(self) -> ModelInfo:
        """The store's model info with the server's limits."""
        return dataclasses.replace(
            self.store.info(),
            max_batch_elements=self.limits.max_batch_elements,
            max_message_bytes=self.limits.max_message_bytes,
        )

    def describe_graph(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        max_nodes: int = 0,
        return_gradients: bool = False,
    ) -> GraphDescription:
        return self.store.describe_graph(
            inputs, targets, max_nodes=max_nodes, return_gradients=return_gradients
        )


class RoundCoordinator(DirectCoordinator):
    """Base of the modes that decide per ComputeGradients/ApplyUpdate call (sync, async)."""

    def __init__(
        self,
        store: ParameterStore,
        config: CoordinationConfig,
        metrics: RunMetrics | None = None,
        limits: LimitsConfig | None = None,
    ) -> None:
        super().__init__(store, metrics, limits)
        self.config = config

    def train(self, steps: Sequence[TrainStep], *, request_id: str = "") -> TrainResult:
        raise FailedPreconditionError(
            "Train runs in --mode direct only; in sync or async mode call "
            "ComputeGradients and ApplyUpdate (client/train.py --transport unary)",
            field="mode",
            reason="UNSUPPORTED_IN_MODE",
        )

    def train_pass(self, expanded: PassSteps, *, request_id: str = "") -> TrainResult:
        return self.train(expanded.steps, request_id=request_id)


def build_coordinator(
    store: ParameterStore,
    config: CoordinationConfig,
    metrics: RunMetrics | None = None,
    limits: LimitsConfig | None = None,
) -> DirectCoordinator:
    # Imported here: the modes build on this module's classes.
    from .asynchronous import AsyncCoordinator  # noqa: PLC0415
    from .sync import SyncCoordinator  # noqa: PLC0415

    if config.mode == "sync":
        return SyncCoordinator(store, config, metrics, limits)
    if config.mode == "async":
        return AsyncCoordinator(store, config, metrics, limits)
    return DirectCoordinator(store, metrics, limits)
