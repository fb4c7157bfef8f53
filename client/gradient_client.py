"""GradientClient: every gradserve.v1 RPC as a typed method over torch tensors.

Every call has a deadline. Calls that change the server carry a request_id (one is made when
the caller gives none), so retrying them after UNAVAILABLE is safe: the server answers a
repeated id with the first answer and applies nothing twice. Errors leave as GradserveError.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradserve.client.errors import error_from_rpc
from gradserve.codec import (
    DEFAULT_CHUNK_BYTES,
    ChunkAssembler,
    dtype_from_proto,
    tensor_from_proto,
    tensor_to_chunks,
    tensor_to_proto,
)
from gradserve.errors import UnavailableError
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

T = TypeVar("T")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE_NAME = "gradserve.v1.GradientService"


@dataclass(frozen=True)
class RetryPolicy:
    """Retry UNAVAILABLE with capped exponential backoff and full jitter."""

    max_attempts: int = 6
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        return random.uniform(0, ceiling)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class GradientResult:
    loss: float
    batch_size: int
    accumulated_batches: int
    accumulated_samples: int
    model_version: int
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class UpdateResult:
    model_version: int
    applied_batches: int
    applied_samples: int
    gradient_norm: float


@dataclass(frozen=True)
class EvaluationResult:
    loss: float | None
    batch_size: int
    model_version: int
    predictions: torch.Tensor | None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    model: str
    model_spec: str
    parameters: tuple[TensorSpec, ...]
    parameter_count: int
    input: TensorSpec
    target: TensorSpec
    loss: str
    optimizer: str
    model_version: int
    accumulated_batches: int
    accumulated_samples: int
    max_message_bytes: int
    max_batch_elements: int


@dataclass(frozen=True)
class TrainStep:
    """Batches to accumulate, then an update when learning_rate is given (Train stream)."""

    batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
    learning_rate: float | None = None
    reduction: str = "sum"
    expected_version: int | None = None


@dataclass(frozen=True)
class StepResult:
    losses: tuple[float, ...]
    model_version: int
    accumulated_batches: int
    applied: bool
    applied_batches: int
    gradient_norm: float


def _train_step_to_proto(step: TrainStep) -> pb.TrainStep:
    message = pb.TrainStep(
        batches=[
            pb.Batch(inputs=tensor_to_proto(inputs), targets=tensor_to_proto(targets))
            for inputs, targets in step.batches
        ],
        apply_update=step.learning_rate is not None,
        learning_rate=step.learning_rate or 0.0,
        reduction=pb.REDUCTION_MEAN if step.reduction == "mean" else pb.REDUCTION_SUM,
    )
    if step.expected_version is not None:
        message.expected_version = step.expected_version
    return message


def _step_result(message: pb.StepResult) -> StepResult:
    return StepResult(
        losses=tuple(message.losses),
        model_version=message.model_version,
        accumulated_batches=message.accumulated_batches,
        applied=message.applied,
        applied_batches=message.applied_batches,
        gradient_norm=message.gradient_norm,
    )


def _spec(message: pb.TensorSpec) -> TensorSpec:
    return TensorSpec(message.name, dtype_from_proto(message.dtype), tuple(message.shape))


def new_request_id() -> str:
    return uuid.uuid4().hex


class GradientClient:
    """A connection to one gradserve server.

    >>> with GradientClient("127.0.0.1:50051") as client:
    ...     client.compute_gradients(x, y)
    ...     client.apply_update(0.01)
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self._metadata = tuple(metadata)
        if channel is None:
            options = [
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # Reconnect soon after a server restart: gRPC's default backoff grows to 120 s,
                # and calls fail fast while the channel waits it out.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ]
            if credentials is None:
                channel = grpc.insecure_channel(target, options=options)
            else:
                channel = grpc.secure_channel(target, credentials, options=options)
        self._channel = channel
        self._stub = pb_grpc.GradientServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GradientClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Block until the server reports SERVING; UnavailableError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: str = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnavailableError(
                    f"server at {self.target} not ready after {timeout:g}s ({last})"
                )
            try:
                response = self._health.Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                    timeout=min(remaining, 2.0),
                    wait_for_ready=True,
                    metadata=self._metadata,
                )
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.RpcError as error:
                last = f"{error.code().name}: {error.details()}"
                if error.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise error_from_rpc(error) from None
            # Polling a health endpoint: the interval bounds how fast readiness is seen.
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    # -- the RPCs ------------------------------------------------------------------------

    def compute_gradients(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        request_id: str | None = None,
        return_gradients: bool = False,
        based_on_version: int | None = None,
    ) -> GradientResult:
        """`based_on_version`: the model version this batch was prepared against (the server's
        async mode bounds the staleness; docs/scaling.md)."""
        request = pb.ComputeGradientsRequest(
            inputs=tensor_to_proto(inputs),
            targets=tensor_to_proto(targets),
            request_id=request_id or new_request_id(),
            return_gradients=return_gradients,
        )
        if based_on_version is not None:
            request.based_on_version = based_on_version
        response = self._call(self._stub.ComputeGradients, request)
        return GradientResult(
            loss=response.loss,
            batch_size=response.batch_size,
            accumulated_batches=response.accumulated_batches,
            accumulated_samples=response.accumulated_samples,
            model_version=response.model_version,
            gradients=_tensors_by_name(response.gradients),
        )

    def apply_update(
        self,
        learning_rate: float,
        *,
        reduction: str = "sum",
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> UpdateResult:
        request = pb.ApplyUpdateRequest(
            learning_rate=learning_rate,
            reduction=pb.REDUCTION_MEAN if reduction == "mean" else pb.REDUCTION_SUM,
            request_id=request_id or new_request_id(),
        )
        if expected_version is not None:
            request.expected_version = expected_version
        response = self._call(self._stub.ApplyUpdate, request)
        return UpdateResult(
            model_version=response.model_version,
            applied_batches=response.applied_batches,
            applied_samples=response.applied_samples,
            gradient_norm=response.gradient_norm,
        )

    def evaluate(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        return_predictions: bool = False,
    ) -> EvaluationResult:
        request = pb.EvaluateRequest(
            inputs=tensor_to_proto(inputs), return_predictions=return_predictions
        )
        if targets is not None:
            request.targets.CopyFrom(tensor_to_proto(targets))
        response = self._call(self._stub.Evaluate, request)
        predictions = None
        if response.HasField("predictions"):
            predictions = tensor_from_proto(response.predictions, "predictions").clone()
        return EvaluationResult(
            loss=response.loss if response.has_loss else None,
            batch_size=response.batch_size,
            model_version=response.model_version,
            predictions=predictions,
        )

    def get_parameters(self, names: Iterable[str] = ()) -> tuple[int, dict[str, torch.Tensor]]:
        """(model_version, {name: value}); all parameters when `names` is empty."""
        response = self._call(self._stub.GetParameters, pb.GetParametersRequest(names=list(names)))
        return response.model_version, _tensors_by_name(response.parameters)

    def set_parameters(
        self,
        values: Mapping[str, torch.Tensor],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> int:
        """Replace parameter values; returns the new model version."""
        request = pb.SetParametersRequest(
            parameters=[tensor_to_proto(value, name) for name, value in values.items()],
            request_id=request_id or new_request_id(),
        )
        if expected_version is not None:
            request.expected_version = expected_version
        return int(self._call(self._stub.SetParameters, request).model_version)

    def model_info(self) -> ModelInfo:
        response = self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest())
        return ModelInfo(
            model=response.model,
            model_spec=response.model_spec,
            parameters=tuple(_spec(p) for p in response.parameters),
            parameter_count=response.parameter_count,
            input=_spec(response.input),
            target=_spec(response.target),
            loss=response.loss,
            optimizer=response.optimizer,
            model_version=response.model_version,
            accumulated_batches=response.accumulated_batches,
            accumulated_samples=response.accumulated_samples,
            max_message_bytes=response.max_message_bytes,
            max_batch_elements=response.max_batch_elements,
        )

    def discard_gradients(self) -> int:
        """Drop the accumulated gradients; returns how many batches were dropped."""
        response = self._call(self._stub.DiscardGradients, pb.DiscardGradientsRequest())
        return int(response.discarded_batches)

    def describe_graph(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        return_gradients: bool = False,
        max_nodes: int = 0,
    ) -> GraphDescription:
        """The autograd graph the server's forward pass records for this batch; changes nothing
        on the server. max_nodes 0 is the server's default cap (docs/graph.md)."""
        request = pb.DescribeGraphRequest(
            inputs=tensor_to_proto(inputs),
            targets=tensor_to_proto(targets),
            return_gradients=return_gradients,
            max_nodes=max_nodes,
        )
        response = self._call(self._stub.DescribeGraph, request)
        return graph_from_proto(response)

    # -- streams -------------------------------------------------------------------------

    def train_stream(
        self,
        requests: Iterable[Sequence[TrainStep]],
        *,
        window: int = 8,
        timeout: float | None = None,
    ) -> Iterator[list[StepResult]]:
        """Run groups of steps over one Train stream, at most `window` groups in flight.

        Yields each group's results in order. The same arithmetic as the unary calls, with one
        round trip per group instead of two per step. `timeout` bounds the whole stream
        (default: the client's timeout per group of the window, at least an hour)."""
        slots = threading.Semaphore(window)
        finished = threading.Event()

        def gated() -> Iterator[pb.TrainRequest]:
            for steps in requests:
                # Wait for a free slot; stop feeding once the consumer is gone.
                while not slots.acquire(timeout=0.1):
                    if finished.is_set():
                        return
                if finished.is_set():
                    return
                yield pb.TrainRequest(
                    steps=[_train_step_to_proto(step) for step in steps],
                    request_id=new_request_id(),
                )

        call = self._stub.Train(
            gated(), timeout=timeout or max(3600.0, self.timeout), metadata=self._metadata
        )
        try:
            for response in call:
                slots.release()
                yield [_step_result(result) for result in response.steps]
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        finally:
            finished.set()
            call.cancel()

    def stream_parameters(
        self, names: Iterable[str] = (), *, chunk_bytes: int = 0
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """GetParameters in chunks: no message-size limit applies to the model's size."""
        request = pb.StreamParametersRequest(names=list(names), chunk_bytes=chunk_bytes)
        version = 0
        assembler = ChunkAssembler()
        try:
            for chunk in self._stub.StreamParameters(
                request, timeout=self.timeout, metadata=self._metadata
            ):
                version = chunk.model_version
                assembler.add(chunk)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        if assembler.empty:
            return version, {}
        return version, dict(assembler.tensors())

    def upload_parameters(
        self,
        values: Mapping[str, torch.Tensor],
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> int:
        """SetParameters in chunks, for models past the message limit; returns the version."""
        request_id = request_id or new_request_id()

        def chunks() -> Iterator[pb.UploadParametersRequest]:
            first = True
            for name, value in values.items():
                for chunk in tensor_to_chunks(
                    name, value, chunk_bytes, message=pb.UploadParametersRequest
                ):
                    if first:
                        chunk.request_id = request_id
                        if expected_version is not None:
                            chunk.expected_version = expected_version
                        first = False
                    yield chunk

        attempt = 0
        while True:
            try:
                response = self._stub.UploadParameters(
                    chunks(), timeout=self.timeout, metadata=self._metadata
                )
                return int(response.model_version)
            except grpc.RpcError as error:
                attempt += 1
                if (
                    error.code() is not grpc.StatusCode.UNAVAILABLE
                    or attempt >= self.retry.max_attempts
                ):
                    raise error_from_rpc(error) from None
            time.sleep(self.retry.backoff(attempt))

    # -- internals -----------------------------------------------------------------------

    def _call(self, method: Callable[..., T], request: Any) -> T:
        """One RPC with the deadline, retried on UNAVAILABLE under the retry policy.

        Only called with requests that are safe to repeat: reads, or writes carrying a
        request_id (the same id on every attempt)."""
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                attempt += 1
                if (
                    error.code() is not grpc.StatusCode.UNAVAILABLE
                    or attempt >= self.retry.max_attempts
                ):
                    raise error_from_rpc(error) from None
            time.sleep(self.retry.backoff(attempt))


def _tensors_by_name(messages: Iterable[pb.Tensor]) -> dict[str, torch.Tensor]:
    # clone(): the decoded tensor is a read-only view of the message's bytes.
    return {m.name: tensor_from_proto(m, f"parameters[{m.name}]").clone() for m in messages}


# -- DescribeGraph results -------------------------------------------------------------

_GRAPH_NODE_KINDS = {
    pb.GRAPH_NODE_KIND_BACKWARD: "backward",
    pb.GRAPH_NODE_KIND_PARAMETER: "parameter",
    pb.GRAPH_NODE_KIND_INPUT: "input",
}


@dataclass(frozen=True)
class GraphNode:
    id: int
    # "backward" (a grad_fn such as MulBackward0), "parameter" (a leaf), "input" (no grad).
    kind: str
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype | None
    requires_grad: bool
    gradient: torch.Tensor | None = None


@dataclass(frozen=True)
class GraphEdge:
    # source passes gradient to target in backward(); carries_gradient False: target is an
    # input the operation of source used.
    source: int
    target: int
    slot: int
    carries_gradient: bool


@dataclass(frozen=True)
class GraphDescription:
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    root: int
    loss: float
    model_version: int
    batch_size: int
    max_nodes: int

    def children(self, node_id: int) -> list[tuple[GraphEdge, GraphNode]]:
        """Edges out of a node with their targets, in operand (slot) order."""
        out = [edge for edge in self.edges if edge.source == node_id]
        out.sort(key=lambda e: (e.slot < 0, e.slot, not e.carries_gradient))
        return [(edge, self.nodes[edge.target]) for edge in out]


def graph_from_proto(response: pb.DescribeGraphResponse) -> GraphDescription:
    nodes = []
    for index, message in enumerate(response.nodes):
        gradient = None
        if message.HasField("gradient"):
            gradient = tensor_from_proto(message.gradient, f"nodes[{index}].gradient").clone()
        nodes.append(
            GraphNode(
                id=message.id,
                kind=_GRAPH_NODE_KINDS.get(message.kind, "unknown"),
                name=message.name,
                shape=tuple(message.shape),
                dtype=dtype_from_proto(message.dtype) if message.dtype else None,
                requires_grad=message.requires_grad,
                gradient=gradient,
            )
        )
    edges = tuple(GraphEdge(e.from_id, e.to_id, e.slot, e.carries_gradient) for e in response.edges)
    return GraphDescription(
        nodes=tuple(nodes),
        edges=edges,
        root=response.root_id,
        loss=response.loss,
        model_version=response.model_version,
        batch_size=response.batch_size,
        max_nodes=response.max_nodes,
    )
