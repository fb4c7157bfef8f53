"""The paired x_to_proto / x_from_proto functions for the autograd graph that DescribeGraph
returns: gradserve.serde's graph part, in a module of its own to keep serde.py small."""

from __future__ import annotations

from gradserve.codec import (
    WIRE_TYPES,
    dtype_from_proto,
    dtype_to_proto,
    tensor_from_proto,
    tensor_into_proto,
)
from gradserve.errors import InvalidArgumentError
from gradserve.graph_types import Graph, GraphDescription, GraphEdge, GraphNode, NodeKind
from gradserve.v1 import gradserve_pb2 as pb

WIRE_DTYPES = frozenset(wire.torch_dtype for wire in WIRE_TYPES)


_NODE_KIND_TO_PROTO = {
    NodeKind.BACKWARD: pb.GRAPH_NODE_KIND_BACKWARD,
    NodeKind.PARAMETER: pb.GRAPH_NODE_KIND_PARAMETER,
    NodeKind.INPUT: pb.GRAPH_NODE_KIND_INPUT,
}
_NODE_KIND_FROM_PROTO = {value: kind for kind, value in _NODE_KIND_TO_PROTO.items()}


def graph_node_to_proto(node: GraphNode) -> pb.GraphNode:
    message = pb.GraphNode(
        id=node.id,
        kind=_NODE_KIND_TO_PROTO[node.kind],
        name=node.name,
        shape=node.shape,
        requires_grad=node.requires_grad,
    )
    # A dtype with no wire type (complex, say) is left unset.
    if node.dtype is not None and node.dtype in WIRE_DTYPES:
        message.dtype = dtype_to_proto(node.dtype)
    if node.gradient is not None:
        tensor_into_proto(node.gradient, message.gradient, node.name)
    return message


def graph_node_from_proto(message: pb.GraphNode, field: str = "nodes[0]") -> GraphNode:
    kind = _NODE_KIND_FROM_PROTO.get(message.kind)
    if kind is None:
        raise InvalidArgumentError(
            f"{field}.kind: unknown value {message.kind}", field=f"{field}.kind"
        )
    gradient = None
    if message.HasField("gradient"):
        gradient = tensor_from_proto(message.gradient, f"{field}.gradient").clone()
    return GraphNode(
        id=message.id,
        kind=kind,
        name=message.name,
        shape=tuple(message.shape),
        dtype=dtype_from_proto(message.dtype, f"{field}.dtype") if message.dtype else None,
        requires_grad=message.requires_grad,
        gradient=gradient,
    )


def graph_description_to_proto(description: GraphDescription) -> pb.DescribeGraphResponse:
    graph = description.graph
    return pb.DescribeGraphResponse(
        nodes=[graph_node_to_proto(node) for node in graph.nodes],
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
        model_version=description.model_version,
        batch_size=description.batch_size,
        max_nodes=description.max_nodes,
    )


def graph_description_from_proto(message: pb.DescribeGraphResponse) -> GraphDescription:
    graph = Graph(
        nodes=tuple(
            graph_node_from_proto(node, f"nodes[{index}]")
            for index, node in enumerate(message.nodes)
        ),
        edges=tuple(
            GraphEdge(edge.from_id, edge.to_id, edge.slot, edge.carries_gradient)
            for edge in message.edges
        ),
        root=message.root_id,
        loss=message.loss,
    )
    return GraphDescription(
        graph=graph,
        batch_size=message.batch_size,
        model_version=message.model_version,
        max_nodes=message.max_nodes,
    )
