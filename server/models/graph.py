"""The autograd graph of one forward pass, as plain data: what DescribeGraph returns.

PyTorch records every operation of the forward pass on a tensor that requires grad as a
backward function (the result's `grad_fn`: MulBackward0, AddBackward0, ...); each one points,
through `grad_fn.next_functions`, at the backward functions of its operands, down to one
AccumulateGrad node per leaf parameter. backward() walks exactly these links from the loss.

`build_graph` walks them breadth-first from `loss.grad_fn` and returns a `Graph`:
- BACKWARD nodes for the backward functions, named as PyTorch names them;
- PARAMETER nodes for the AccumulateGrad nodes, named after the parameter they accumulate into;
- INPUT nodes for the tensors that need no gradient (the batch's inputs and targets).
  Autograd does not record these (a next_functions slot of a constant is `(None, 0)`), so
  `ConstantUses` watches the forward pass with a TorchFunctionMode and notes which operation's
  result (its grad_fn) took each named constant as an argument; the INPUT node is attached
  there, in the `None` slot when the operation has exactly as many `None` slots as it took
  named constants.

Pure torch, no protobuf, no locks: the caller owns the tensors and the graph's lifetime. The
Graph types themselves are gradserve.types' (the client reads the same ones).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.autograd.graph import Node
from torch.overrides import TorchFunctionMode

from gradserve.errors import InvalidArgumentError, ResourceExhaustedError
from gradserve.graph_types import Graph, GraphEdge, GraphNode, NodeKind

# Node caps: the default when a request gives none, and the most a request may ask for.
DEFAULT_MAX_NODES = 1024
MAX_NODES = 65536


def with_gradients(graph: Graph, gradients: Mapping[str, torch.Tensor]) -> Graph:
    """A copy whose PARAMETER nodes carry the given gradients (by parameter name)."""
    nodes = tuple(
        dataclasses.replace(node, gradient=gradients[node.name])
        if node.kind is NodeKind.PARAMETER and node.name in gradients
        else node
        for node in graph.nodes
    )
    return dataclasses.replace(graph, nodes=nodes)


def effective_max_nodes(requested: int) -> int:
    """The cap a request runs under: 0 -> the default; capped at MAX_NODES; < 0 rejected."""
    if requested < 0:
        raise InvalidArgumentError(
            f"max_nodes: {requested}, expected 0 (the server's default, {DEFAULT_MAX_NODES}) "
            f"or a positive number (at most {MAX_NODES} is used)",
            field="max_nodes",
        )
    return min(requested or DEFAULT_MAX_NODES, MAX_NODES)


class ConstantUses(TorchFunctionMode):
    """While active, records (grad_fn, name) for every torch call that takes one of the named
    constant tensors (by identity) as an argument and returns a tensor with a grad_fn.

    Only calls made directly by the model and loss are seen (a mode is off inside its own
    handler), which is the level at which the constants are passed: `w * x`, `pred - y`,
    `linear(x, W, b)`, `cross_entropy(logits, y)`."""

    def __init__(self, constants: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self._constants = {id(tensor): name for name, tensor in constants.items()}
        self.uses: list[tuple[Node, str]] = []

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        grad_fn = result.grad_fn if isinstance(result, torch.Tensor) else None
        if grad_fn is not None:
            seen: list[str] = []
            for argument in _flat(args, kwargs.values()):
                name = self._constants.get(id(argument))
                if name is not None and name not in seen:
                    seen.append(name)
            self.uses.extend((grad_fn, name) for name in seen)
        return result


def _flat(*groups: Iterable[Any]) -> Iterable[Any]:
    for group in groups:
        for item in group:
            if isinstance(item, (list, tuple)):
                yield from item
            else:
                yield item


def build_graph(
    loss: torch.Tensor,
    parameters: Mapping[str, torch.Tensor],
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    constants: Mapping[str, torch.Tensor] | None = None,
    constant_uses: Sequence[tuple[Node, str]] = (),
) -> Graph:
    """Walk loss.grad_fn into a Graph; ResourceExhaustedError past max_nodes nodes.

    `parameters` names the leaves; `constants` (name -> tensor) become INPUT nodes, attached
    where `constant_uses` (from ConstantUses) says they were used. The walk stops as soon as
    the cap is passed, so a huge graph costs no more than max_nodes steps."""
    constants = constants or {}
    names_by_leaf = {id(tensor): name for name, tensor in parameters.items()}
    nodes: list[GraphNode] = []
    edges: list[GraphEdge] = []
    ids: dict[Node, int] = {}

    def add(node: GraphNode) -> int:
        if len(nodes) >= max_nodes:
            raise ResourceExhaustedError(
                f"max_nodes: the graph has more than {max_nodes} nodes; ask for a larger "
                f"max_nodes (the server allows up to {MAX_NODES})",
                field="max_nodes",
            )
        nodes.append(node)
        return node.id

    root_fn = loss.grad_fn
    if root_fn is None:
        raise InvalidArgumentError(
            "inputs: the loss does not depend on any parameter, so there is no graph",
            field="inputs",
        )
    ids[root_fn] = add(_describe(root_fn, 0, names_by_leaf))
    queue: deque[Node] = deque([root_fn])
    while queue:
        function = queue.popleft()
        source = ids[function]
        for slot, (child, _) in enumerate(function.next_functions):
            if child is None:
                continue
            child_id = ids.get(child)
            if child_id is None:
                child_id = add(_describe(child, len(nodes), names_by_leaf))
                ids[child] = child_id
                queue.append(child)
            edges.append(GraphEdge(source, child_id, slot))

    input_ids: dict[str, int] = {}
    for name, tensor in constants.items():
        input_ids[name] = add(
            GraphNode(
                id=len(nodes),
                kind=NodeKind.INPUT,
                name=name,
                shape=tuple(tensor.shape),
                dtype=tensor.dtype,
                requires_grad=tensor.requires_grad,
            )
        )
    uses_by_function: dict[Node, list[str]] = {}
    for function, name in constant_uses:
        if function in ids and name in input_ids:
            uses_by_function.setdefault(function, []).append(name)
    for function, used in uses_by_function.items():
        empty_slots = [i for i, (child, _) in enumerate(function.next_functions) if child is None]
        slots = empty_slots if len(empty_slots) == len(used) else [-1] * len(used)
        for name, slot in zip(used, slots, strict=True):
            edges.append(GraphEdge(ids[function], input_ids[name], slot, carries_gradient=False))

    edges.sort(key=lambda e: (e.source, e.slot < 0, e.slot))
    return Graph(nodes=tuple(nodes), edges=tuple(edges), root=ids[root_fn], loss=loss.item())


def _describe(function: Node, node_id: int, names_by_leaf: Mapping[int, str]) -> GraphNode:
    variable = getattr(function, "variable", None)
    if isinstance(variable, torch.Tensor):  # AccumulateGrad: the leaf itself
        return GraphNode(
            id=node_id,
            kind=NodeKind.PARAMETER,
            name=names_by_leaf.get(id(variable), "(unnamed leaf)"),
            shape=tuple(variable.shape),
            dtype=variable.dtype,
            requires_grad=variable.requires_grad,
        )
    shape: tuple[int, ...] = ()
    dtype = None
    metadata = getattr(function, "_input_metadata", ())
    if metadata:
        shape = tuple(int(d) for d in metadata[0].shape)
        dtype = metadata[0].dtype
    return GraphNode(
        id=node_id,
        kind=NodeKind.BACKWARD,
        name=function.name(),
        shape=shape,
        dtype=dtype,
        requires_grad=True,
    )
