"""The GradientService servicer: decode the request, call one ParameterStore method, encode.

No torch arithmetic and no error handling here: the store does the work and raises the
project's errors; the interceptor turns them into statuses.
"""

from __future__ import annotations

import grpc
import torch

from gradserve.codec import (
    WIRE_TYPES,
    dtype_to_proto,
    spec_to_proto,
    tensor_from_proto,
    tensor_to_proto,
)
from gradserve.errors import InvalidArgumentError
from gradserve.server.graph import GraphNode, NodeKind
from gradserve.server.metrics import ServerMetrics
from gradserve.server.parameter_store import ParameterStore, Reduction
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
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._max_elements = max_batch_elements
        self._max_message_bytes = max_message_bytes

    def _batch(self, message: pb.Tensor, field: str) -> torch.Tensor:
        return tensor_from_proto(message, field, max_elements=self._max_elements)

    def ComputeGradients(
        self, request: pb.ComputeGradientsRequest, context: grpc.ServicerContext
    ) -> pb.ComputeGradientsResponse:
        result = self._store.compute_gradients(
            self._batch(request.inputs, "inputs"),
            self._batch(request.targets, "targets"),
            request_id=request.request_id,
            return_gradients=request.return_gradients,
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
        result = self._store.apply_update(
            request.learning_rate,
            reduction=reduction_from_proto(request.reduction),
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
            request_id=request.request_id,
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
        version, tensors = self._store.read_parameters(list(request.names), _encode)
        return pb.GetParametersResponse(parameters=tensors, model_version=version)

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


def _encode(name: str, value: torch.Tensor) -> pb.Tensor:
    return tensor_to_proto(value, name)


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
