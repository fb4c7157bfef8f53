"""The plain types of the computational graph (DescribeGraph): its nodes, edges and the
description a client gets back; encoded by gradserve.serde_graph."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


class NodeKind(Enum):
    """What a graph node is: a backward function, a parameter (an AccumulateGrad's leaf),
    or an input tensor."""

    # A backward function (a grad_fn such as MulBackward0).
    BACKWARD = "backward"
    # A leaf parameter (its AccumulateGrad node).
    PARAMETER = "parameter"
    # A tensor that needs no gradient (the batch's inputs and targets).
    INPUT = "input"


@dataclass(frozen=True)
class GraphNode:
    """One node of a batch's autograd graph: its kind, name, shape and dtype, and for a
    parameter, when asked for, this batch's gradient."""

    id: int
    kind: NodeKind
    # BACKWARD: "MulBackward0"; PARAMETER: the parameter's name; INPUT: "inputs", "targets".
    name: str
    # BACKWARD: shape of the gradient it receives (its forward op's output); else the tensor's.
    shape: tuple[int, ...]
    dtype: torch.dtype | None
    requires_grad: bool
    # PARAMETER nodes only, when asked for: this batch's d loss / d parameter.
    gradient: torch.Tensor | None = None


@dataclass(frozen=True)
class GraphEdge:
    """A gradient's way from one node to another, in operand (slot) order."""

    # source passes gradient to target (target is in source's next_functions) or, when
    # carries_gradient is False, target is an INPUT the operation of source used.
    source: int
    target: int
    # Position in source's next_functions; -1 when unknown (an INPUT with no matching slot).
    slot: int
    carries_gradient: bool = True


@dataclass(frozen=True)
class Graph:
    """The autograd graph the server's forward pass recorded for one batch, from the loss
    back to the parameters and inputs."""

    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    root: int
    loss: float

    def node(self, name: str) -> GraphNode:
        """The first node with this name."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def children(self, node_id: int) -> list[tuple[GraphEdge, GraphNode]]:
        """Edges out of a node with their targets, in operand (slot) order."""
        out = [edge for edge in self.edges if edge.source == node_id]
        out.sort(key=lambda e: (e.slot < 0, e.slot, not e.carries_gradient))
        return [(edge, self.nodes[edge.target]) for edge in out]


@dataclass(frozen=True)
class GraphDescription:
    """DescribeGraph's answer: the graph, the batch size, the version, and the node cap."""

    graph: Graph
    batch_size: int
    model_version: int
    # The node cap the call ran under.
    max_nodes: int


# -- runs and their checkpoints (docs/runs.md) ---------------------------------------------
