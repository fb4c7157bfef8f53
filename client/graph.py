"""`python -m gradserve.client.graph`: show the autograd graph the server records for one batch.

Prints the graph of the first batch of the training data as an indented tree, loss at the top
and the leaves (parameters, and the inputs/targets that need no gradient) at the bottom:

    loss = 3.1204  (batch of 10, model version 1)
    └── MeanBackward0  []
        └── PowBackward0  [10, 1]
            └── SubBackward0  [10, 1]
                ├── AddBackward0  [10, 1]
                │   ├── MulBackward0  [10, 1]
                │   │   ├── w  parameter [1]  grad [-0.82]
                │   │   └── inputs  input [10, 1]  no grad
                │   └── b  parameter [1]  grad [-0.91]
                └── targets  input [10, 1]  no grad

and with --dot FILE writes it as Graphviz DOT (`dot -Tpng FILE -o graph.png`). With no
--server an embedded server is started, set to the seed tutorial's initial w, b for the
linear model, exactly as `python client/train.py` does; a remote server is only read
(DescribeGraph changes nothing). Exit codes as train.py's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from gradserve.errors import GradserveError, UnavailableError
from gradserve.graph_types import GraphDescription, GraphEdge, GraphNode, NodeKind

from .config import (
    ConnectionConfig,
    DataConfig,
    EmbeddedServerConfig,
    ScheduleConfig,
    TrainConfig,
)
from .connection import connect
from .data import DataError
from .exit_codes import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from .training_data import load_data

# Tensors with at most this many elements are printed in full; larger ones by their norm.
SHOW_ELEMENTS = 4


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _values(tensor: torch.Tensor) -> str:
    if tensor.numel() <= SHOW_ELEMENTS:
        return "[" + ", ".join(f"{v:.4g}" for v in tensor.detach().flatten().tolist()) + "]"
    return f"(norm {float(tensor.detach().double().norm()):.4g})"


def node_label(node: GraphNode) -> str:
    """One line for a node: name, what it is, shape, and the leaf gradient when present."""
    if node.kind is NodeKind.BACKWARD:
        return f"{node.name}  {_shape(node.shape)}"
    if node.kind is NodeKind.PARAMETER:
        text = f"{node.name}  parameter {_shape(node.shape)}"
        if not node.requires_grad:
            text += "  requires_grad=False"
        if node.gradient is not None:
            text += f"  grad {_values(node.gradient)}"
        return text
    return f"{node.name}  input {_shape(node.shape)}  no grad"


def render_tree(description: GraphDescription) -> str:
    """The graph as an indented tree from the loss down (a node reached twice is printed once,
    then referred to by its id)."""
    graph = description.graph
    lines = [
        f"loss = {graph.loss:.6g}  (batch of {description.batch_size}, "
        f"model version {description.model_version})"
    ]
    printed: set[int] = set()

    def visit(node: GraphNode, prefix: str, last: bool) -> None:
        branch = "└── " if last else "├── "
        if node.id in printed and node.kind is NodeKind.BACKWARD:
            lines.append(f"{prefix}{branch}{node.name}  (#{node.id}, shown above)")
            return
        printed.add(node.id)
        lines.append(f"{prefix}{branch}{node_label(node)}")
        children = graph.children(node.id)
        inner = prefix + ("    " if last else "│   ")
        for index, (_, child) in enumerate(children):
            visit(child, inner, index == len(children) - 1)

    visit(graph.nodes[graph.root], "", True)
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped + '"'


def render_dot(description: GraphDescription) -> str:
    """Graphviz DOT, drawn like the tutorial: leaves at the top, arrows in the direction of the
    forward pass, the loss at the bottom; backward() sends gradients against the arrows.
    Dashed: inputs/targets, which take part in the forward pass but receive no gradient."""
    graph = description.graph
    lines = [
        "digraph gradserve {",
        '  graph [fontname="Helvetica", label="gradserve DescribeGraph: forward along the '
        'arrows, gradients against them", labelloc=b, fontsize=11];',
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [color="#555555"];',
    ]
    for node in graph.nodes:
        if node.kind is NodeKind.BACKWARD:
            attributes = 'shape=box, style="rounded,filled", fillcolor="#e8e8e8"'
            label = f"{node.name}\n{_shape(node.shape)}"
        elif node.kind is NodeKind.PARAMETER:
            attributes = 'shape=ellipse, style=filled, fillcolor="#cfe8ff"'
            label = f"{node.name} (leaf)\n{_shape(node.shape)}, requires_grad"
            if node.gradient is not None:
                label += f"\ngrad {_values(node.gradient)}"
        else:
            attributes = 'shape=ellipse, style=dashed, color="#777777"'
            label = f"{node.name}\n{_shape(node.shape)}, no grad"
        lines.append(f"  n{node.id} [label={_quote(label)}, {attributes}];")
    lines.append(
        f"  loss [label={_quote(f'loss = {graph.loss:.6g}')}, shape=box, style=bold, "
        'color="#b03030"];'
    )
    lines.append(f"  n{graph.root} -> loss;")
    for edge in graph.edges:
        lines.append(f"  n{edge.target} -> n{edge.source}{_edge_style(edge)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _edge_style(edge: GraphEdge) -> str:
    return "" if edge.carries_gradient else ' [style=dashed, color="#999999"]'


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gradserve.client.graph",
        description="Print the autograd graph the server records for the first batch of the "
        "training data (DescribeGraph: nothing changes on the server).",
    )
    add = parser.add_argument
    add("--server", default=None, help="HOST:PORT of a gradserve server; default: embedded")
    add("--model", default="linear", help="model spec of the embedded server")
    add("--seed", type=int, default=0)
    add("--samples", type=int, default=100)
    add("--batch-size", type=int, default=10)
    add("--max-nodes", type=int, default=0, help="node cap (0: the server's default)")
    add("--dot", type=Path, default=None, help="also write the graph as Graphviz DOT here")
    args = parser.parse_args(argv)
    config = TrainConfig(
        connection=ConnectionConfig(server=args.server),
        embedded=EmbeddedServerConfig(model=args.model),
        # A remote server is only read: no initial parameters are set on it.
        data=DataConfig(
            seed=args.seed, samples=args.samples, init="auto" if args.server is None else "server"
        ),
        schedule=ScheduleConfig(batch_size=args.batch_size),
    )
    size = args.batch_size
    try:
        with connect(config) as (client, _):
            info = client.model_info()
            dataset, initial = load_data(config, info)
            if initial:
                client.set_parameters(initial)
            graph = client.describe_graph(
                dataset.inputs[:size],
                dataset.targets[:size],
                return_gradients=True,
                max_nodes=args.max_nodes,
            )
    except DataError as error:
        print(f"graph: {error}", file=sys.stderr)
        return EXIT_USAGE
    except UnavailableError as error:
        print(f"graph: cannot reach the server: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except GradserveError as error:
        where = f" ({error.field})" if error.field else ""
        print(f"graph: the server refused: {error.code.name}{where}: {error}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(render_tree(graph))
    if args.dot is not None:
        args.dot.write_text(render_dot(graph))
        print(f"wrote {args.dot} (render: dot -Tpng {args.dot} -o graph.png)", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
