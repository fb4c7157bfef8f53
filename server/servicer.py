"""The GradientService servicer: decode the request, call one ParameterStore method, encode.

No torch arithmetic and no error handling here: the store does the work and raises the
project's errors; the interceptor turns them into statuses.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import torch

from gradserve.codec import (
    DEFAULT_CHUNK_BYTES,
    WIRE_TYPES,
    ChunkAssembler,
    dtype_to_proto,
    spec_to_proto,
    tensor_from_proto,
    tensor_into_proto,
    tensor_to_chunks,
    tensor_to_proto,
)
from gradserve.errors import FailedPreconditionError, InvalidArgumentError
from gradserve.server.checkpoints import Checkpointer
from gradserve.server.coordination import Coordinator, DirectCoordinator
from gradserve.server.graph import GraphNode, NodeKind
from gradserve.server.metrics import ServerMetrics
from gradserve.server.parameter_store import (
    ParameterStore,
    Reduction,
    TrainResult,
    TrainStep,
)
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

_REDUCTIONS: dict[int, Reduction] = {
    pb.REDUCTION_UNSPECIFIED: Reduction.SUM,
    pb.REDUCTION_SUM: Reduction.SUM,
    pb.REDUCTION_MEAN: Reduction.MEAN,
}


def reduction_from_proto(value: int) -> Reduction:
    try:
        return _REDUCTIONS[value]
    except KeyError:
        raise InvalidArgumentError(f"reduction: unknown value {value}", field="reduction") from None


_WIRE_DTYPES = frozenset(wire.torch_dtype for wire in WIRE_TYPES)


class GradientServicer(pb_grpc.GradientServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        store: ParameterStore,
        metrics: ServerMetrics,
        *,
        max_batch_elements: int,
        max_message_bytes: int,
        checkpointer: Checkpointer | None = None,
        coordinator: Coordinator | None = None,
    ) -> None:
        self._store = store
        # Many workers (server/coordination.py): ComputeGradients and ApplyUpdate go through it.
        self._coordinator = coordinator or DirectCoordinator(store)
        self._checkpointer = checkpointer
        self._metrics = metrics
        self._max_elements = max_batch_elements
        self._max_message_bytes = max_message_bytes

    def _batch(self, message: pb.Tensor, field: str) -> torch.Tensor:
        return tensor_from_proto(message, field, max_elements=self._max_elements)

    def ComputeGradients(
        self, request: pb.ComputeGradientsRequest, context: grpc.ServicerContext
    ) -> pb.ComputeGradientsResponse:
        if not context.is_active():
            # The caller is gone (cancelled, deadline passed) while the call queued: skip the work.
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled before it ran")
        result = self._coordinator.compute_gradients(
            self._batch(request.inputs, "inputs"),
            self._batch(request.targets, "targets"),
            request_id=request.request_id,
            return_gradients=request.return_gradients,
            based_on_version=(
                request.based_on_version if request.HasField("based_on_version") else None
            ),
        )
        metrics = self._metrics
        if result.replayed:
            metrics.replayed.labels("ComputeGradients").inc()
        else:
            metrics.last_loss.set(result.loss)
            metrics.samples.inc(result.batch_size)
            metrics.accumulated_batches.set(result.accumulated_batches)
        return pb.ComputeGradientsResponse(
            loss=result.loss,
            batch_size=result.batch_size,
            accumulated_batches=result.accumulated_batches,
            accumulated_samples=result.accumulated_samples,
            model_version=result.model_version,
            gradients=[tensor_to_proto(value, name) for name, value in result.gradients],
        )

    def ApplyUpdate(
        self, request: pb.ApplyUpdateRequest, context: grpc.ServicerContext
    ) -> pb.ApplyUpdateResponse:
        result = self._coordinator.apply_update(
            request.learning_rate,
            reduction=reduction_from_proto(request.reduction),
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
            request_id=request.request_id,
            time_remaining=context.time_remaining(),
        )
        metrics = self._metrics
        if result.replayed:
            metrics.replayed.labels("ApplyUpdate").inc()
        else:
            metrics.updates.inc()
            metrics.model_version.set(result.model_version)
            metrics.gradient_norm.set(result.gradient_norm)
            metrics.accumulated_batches.set(0)
        return pb.ApplyUpdateResponse(
            model_version=result.model_version,
            applied_batches=result.applied_batches,
            applied_samples=result.applied_samples,
            gradient_norm=result.gradient_norm,
        )

    def Evaluate(
        self, request: pb.EvaluateRequest, context: grpc.ServicerContext
    ) -> pb.EvaluateResponse:
        targets = self._batch(request.targets, "targets") if request.HasField("targets") else None
        result = self._store.evaluate(
            self._batch(request.inputs, "inputs"),
            targets,
            return_predictions=request.return_predictions,
        )
        response = pb.EvaluateResponse(
            loss=result.loss or 0.0,
            has_loss=result.loss is not None,
            batch_size=result.batch_size,
            model_version=result.model_version,
        )
        if result.predictions is not None:
            response.predictions.CopyFrom(tensor_to_proto(result.predictions))
        return response

    def GetParameters(
        self, request: pb.GetParametersRequest, context: grpc.ServicerContext
    ) -> pb.GetParametersResponse:
        response = pb.GetParametersResponse()
        response.model_version, _ = self._store.read_parameters(
            list(request.names),
            lambda name, value: tensor_into_proto(value, response.parameters.add(), name),
        )
        return response

    def SetParameters(
        self, request: pb.SetParametersRequest, context: grpc.ServicerContext
    ) -> pb.SetParametersResponse:
        values = [
            (tensor.name, tensor_from_proto(tensor, f"parameters[{index}]"))
            for index, tensor in enumerate(request.parameters)
        ]
        result = self._store.set_parameters(
            values,
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
            request_id=request.request_id,
        )
        if result.replayed:
            self._metrics.replayed.labels("SetParameters").inc()
        else:
            self._metrics.model_version.set(result.model_version)
            self._metrics.accumulated_batches.set(0)
        return pb.SetParametersResponse(model_version=result.model_version)

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        info = self._store.info()
        return pb.GetModelInfoResponse(
            model=info.model,
            model_spec=info.model_spec,
            parameters=[spec_to_proto(p.name, p.dtype, p.shape) for p in info.parameters],
            parameter_count=info.parameter_count,
            input=spec_to_proto("inputs", info.input_dtype, info.input_shape),
            target=spec_to_proto("targets", info.target_dtype, info.target_shape),
            loss=info.loss,
            optimizer=info.optimizer,
            model_version=info.model_version,
            accumulated_batches=info.accumulated_batches,
            accumulated_samples=info.accumulated_samples,
            max_batch_elements=self._max_elements,
            max_message_bytes=self._max_message_bytes,
        )

    def DiscardGradients(
        self, request: pb.DiscardGradientsRequest, context: grpc.ServicerContext
    ) -> pb.DiscardGradientsResponse:
        result = self._store.discard_gradients()
        self._metrics.accumulated_batches.set(0)
        return pb.DiscardGradientsResponse(
            discarded_batches=result.discarded_batches, model_version=result.model_version
        )

    def SaveCheckpoint(
        self, request: pb.SaveCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.SaveCheckpointResponse:
        if self._checkpointer is None:
            raise FailedPreconditionError(
                "this server has no checkpoint directory (--checkpoint-dir)", field="checkpoint_dir"
            )
        saved = self._checkpointer.save()
        return pb.SaveCheckpointResponse(
            name=saved.path.name,
            model_version=saved.model_version,
            accumulated_batches=saved.accumulated_batches,
        )

    def DescribeGraph(
        self, request: pb.DescribeGraphRequest, context: grpc.ServicerContext
    ) -> pb.DescribeGraphResponse:
        result = self._store.describe_graph(
            self._batch(request.inputs, "inputs"),
            self._batch(request.targets, "targets"),
            max_nodes=request.max_nodes,
            return_gradients=request.return_gradients,
        )
        graph = result.graph
        return pb.DescribeGraphResponse(
            nodes=[_graph_node(node) for node in graph.nodes],
            edges=[
                pb.GraphEdge(
                    from_id=edge.source,
                    to_id=edge.target,
                    slot=edge.slot,
                    carries_gradient=edge.carries_gradient,
                )
                for edge in graph.edges
            ],
            root_id=graph.root,
            loss=graph.loss,
            model_version=result.model_version,
            batch_size=result.batch_size,
            max_nodes=result.max_nodes,
        )

    def Train(
        self, request_iterator: Iterator[pb.TrainRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.TrainResponse]:
        if type(self._coordinator) is not DirectCoordinator:
            # Sync rounds and staleness are decided per ApplyUpdate/ComputeGradients call; a
            # stream of steps would bypass them.
            raise FailedPreconditionError(
                "Train runs in --mode direct only; in sync or async mode call "
                "ComputeGradients and ApplyUpdate (client/train.py --transport unary)",
                field="mode",
            )
        metrics = self._metrics
        for request in request_iterator:
            steps = [self._train_step(step, index) for index, step in enumerate(request.steps)]
            result = self._store.train(steps, request_id=request.request_id)
            if result.replayed:
                metrics.replayed.labels("Train").inc()
            else:
                _record_train(metrics, steps, result)
            yield pb.TrainResponse(
                steps=[
                    pb.StepResult(
                        losses=outcome.losses,
                        model_version=outcome.model_version,
                        accumulated_batches=outcome.accumulated_batches,
                        applied=outcome.applied,
                        applied_batches=outcome.applied_batches,
                        gradient_norm=outcome.gradient_norm,
                    )
                    for outcome in result.steps
                ],
                request_id=request.request_id,
            )

    def _train_step(self, step: pb.TrainStep, index: int) -> TrainStep:
        where = f"steps[{index}]"
        return TrainStep(
            batches=tuple(
                (
                    self._batch(batch.inputs, f"{where}.batches[{number}].inputs"),
                    self._batch(batch.targets, f"{where}.batches[{number}].targets"),
                )
                for number, batch in enumerate(step.batches)
            ),
            apply_update=step.apply_update,
            learning_rate=step.learning_rate,
            reduction=reduction_from_proto(step.reduction),
            expected_version=step.expected_version if step.HasField("expected_version") else None,
        )

    def StreamParameters(
        self, request: pb.StreamParametersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamParametersResponse]:
        # Room for the chunk's other fields within the message limit.
        largest = self._max_message_bytes - 1024
        chunk_bytes = request.chunk_bytes or min(DEFAULT_CHUNK_BYTES, largest)
        if chunk_bytes < 0 or chunk_bytes > largest:
            raise InvalidArgumentError(
                f"chunk_bytes: {chunk_bytes}, expected 0 (default) or 1..{largest}",
                field="chunk_bytes",
            )
        # The chunks' bytes are cut under the lock (one version, one copy of each byte) and
        # sent after it is released.
        version, chunked = self._store.read_parameters(
            list(request.names),
            lambda name, value: list(tensor_to_chunks(name, value, chunk_bytes)),
        )
        for chunks in chunked:
            for chunk in chunks:
                chunk.model_version = version
                yield chunk

    def UploadParameters(
        self, request_iterator: Iterator[pb.UploadParametersRequest], context: grpc.ServicerContext
    ) -> pb.UploadParametersResponse:
        info = self._store.info()
        assembler = ChunkAssembler({p.name: (p.dtype, p.shape) for p in info.parameters})
        first: pb.UploadParametersRequest | None = None
        for chunk in request_iterator:
            first = first or chunk
            assembler.add(chunk)
        values = assembler.tensors()
        assert first is not None  # tensors() rejects an empty upload
        result = self._store.set_parameters(
            values,
            expected_version=(
                first.expected_version if first.HasField("expected_version") else None
            ),
            request_id=first.request_id,
        )
        if not result.replayed:
            self._metrics.model_version.set(result.model_version)
            self._metrics.accumulated_batches.set(0)
        return pb.UploadParametersResponse(model_version=result.model_version)


def _record_train(metrics: ServerMetrics, steps: list[TrainStep], result: TrainResult) -> None:
    samples = sum(int(inputs.shape[0]) for step in steps for inputs, _ in step.batches)
    metrics.samples.inc(samples)
    last = result.steps[-1]
    for outcome in result.steps:
        if outcome.losses:
            metrics.last_loss.set(outcome.losses[-1])
        if outcome.applied:
            metrics.updates.inc()
            metrics.gradient_norm.set(outcome.gradient_norm)
    metrics.model_version.set(last.model_version)
    metrics.accumulated_batches.set(last.accumulated_batches)


_NODE_KINDS = {
    NodeKind.BACKWARD: pb.GRAPH_NODE_KIND_BACKWARD,
    NodeKind.PARAMETER: pb.GRAPH_NODE_KIND_PARAMETER,
    NodeKind.INPUT: pb.GRAPH_NODE_KIND_INPUT,
}


def _graph_node(node: GraphNode) -> pb.GraphNode:
    message = pb.GraphNode(
        id=node.id,
        kind=_NODE_KINDS[node.kind],
        name=node.name,
        shape=node.shape,
        requires_grad=node.requires_grad,
    )
    if node.dtype is not None and node.dtype in _WIRE_DTYPES:
        message.dtype = dtype_to_proto(node.dtype)
    if node.gradient is not None:
        message.gradient.CopyFrom(tensor_to_proto(node.gradient, node.name))
    return message
