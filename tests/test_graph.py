"""DescribeGraph: the autograd graph of one batch equals what local PyTorch records, changes
nothing on the server, is capped, and renders as a tree and as DOT that Graphviz draws."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections import deque
from pathlib import Path

import grpc
import pytest
import torch
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gradserve.client import graph as client_graph
from gradserve.client import train
from gradserve.client.data import seed_data
from gradserve.client.gradient_client import GradientClient, GraphDescription, NodeKind
from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.errors import ResourceExhaustedError
from gradserve.server.models.graph import DEFAULT_MAX_NODES, MAX_NODES, build_graph
from gradserve.server.models.model import ACTIVATIONS
from gradserve.server.models.networks import build_mlp
from gradserve.v1 import gradserve_pb2 as pb

TIMEOUT = 10.0
TUTORIAL_CHAIN = ["MeanBackward0", "PowBackward0", "SubBackward0", "AddBackward0", "MulBackward0"]


# -- helpers -----------------------------------------------------------------------------


def first_batch(batch_size: int = 10) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    seed = seed_data(0)
    initial = {"w": seed.initial_w, "b": seed.initial_b}
    return seed.dataset.inputs[:batch_size], seed.dataset.targets[:batch_size], initial


def describe(stub, inputs, targets, **fields) -> pb.DescribeGraphResponse:
    request = pb.DescribeGraphRequest(
        inputs=tensor_to_proto(inputs), targets=tensor_to_proto(targets), **fields
    )
    return stub.DescribeGraph(request, timeout=TIMEOUT)


def parameters(stub) -> dict[str, torch.Tensor]:
    response = stub.GetParameters(pb.GetParametersRequest(), timeout=TIMEOUT)
    return {p.name: tensor_from_proto(p).clone() for p in response.parameters}


def set_parameters(stub, values: dict[str, torch.Tensor]) -> None:
    request = pb.SetParametersRequest(
        parameters=[tensor_to_proto(value, name) for name, value in values.items()]
    )
    stub.SetParameters(request, timeout=TIMEOUT)


def oracle(loss: torch.Tensor, named: dict[str, torch.Tensor]):
    """What local PyTorch recorded: node names in breadth-first order from loss.grad_fn
    (AccumulateGrad named after its parameter) and the edges (from, to, slot) between them."""
    names_by_leaf = {id(tensor): name for name, tensor in named.items()}
    order = [loss.grad_fn]
    index = {loss.grad_fn: 0}
    edges = []
    queue = deque([loss.grad_fn])
    while queue:
        function = queue.popleft()
        for slot, (child, _) in enumerate(function.next_functions):
            if child is None:
                continue
            if child not in index:
                index[child] = len(order)
                order.append(child)
                queue.append(child)
            edges.append((index[function], index[child], slot))
    names = [names_by_leaf[id(f.variable)] if hasattr(f, "variable") else f.name() for f in order]
    return names, sorted(edges)


def gradient_part(response: pb.DescribeGraphResponse):
    """The server's graph without the INPUT nodes, in the oracle's terms."""
    kept = [n for n in response.nodes if n.kind != pb.GRAPH_NODE_KIND_INPUT]
    assert [n.id for n in kept] == list(range(len(kept))), "INPUT nodes come last"
    edges = sorted((e.from_id, e.to_id, e.slot) for e in response.edges if e.carries_gradient)
    return [n.name for n in kept], edges


def server_state(server, stub) -> dict[str, object]:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    return {
        "parameters": parameters(stub),
        "gradients": server.store.gradients(),
        "version": info.model_version,
        "accumulated_batches": info.accumulated_batches,
        "accumulated_samples": info.accumulated_samples,
    }


def assert_same_state(before: dict[str, object], after: dict[str, object]) -> None:
    assert after["version"] == before["version"]
    assert after["accumulated_batches"] == before["accumulated_batches"]
    assert after["accumulated_samples"] == before["accumulated_samples"]
    for key in ("parameters", "gradients"):
        old, new = before[key], after[key]
        assert old.keys() == new.keys()
        for name in old:
            if old[name] is None:
                assert new[name] is None, f"{key}[{name}] appeared"
            else:
                assert torch.equal(old[name], new[name]), f"{key}[{name}] changed"


def violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


# -- the graph equals local PyTorch's ---------------------------------------------------


def test_linear_graph_is_what_local_pytorch_records(server, stub):
    inputs, targets, initial = first_batch()
    set_parameters(stub, initial)
    response = describe(stub, inputs, targets)

    w = initial["w"].clone().requires_grad_(True)
    b = initial["b"].clone().requires_grad_(True)
    local_loss = ((w * inputs + b - targets) ** 2).mean()
    assert gradient_part(response) == oracle(local_loss, {"w": w, "b": b})

    names = [n.name for n in response.nodes]
    assert names[:5] == TUTORIAL_CHAIN
    assert sorted(names[5:7]) == ["b", "w"]
    assert response.root_id == 0
    assert response.loss == pytest.approx(local_loss.item(), rel=1e-6)
    assert response.batch_size == 10
    assert response.model_version == 1
    assert response.max_nodes == DEFAULT_MAX_NODES
    by_name = {n.name: n for n in response.nodes}
    for leaf in ("w", "b"):
        node = by_name[leaf]
        assert node.kind == pb.GRAPH_NODE_KIND_PARAMETER
        assert node.requires_grad
        assert list(node.shape) == [1]
        assert not node.HasField("gradient")
    assert list(by_name["MulBackward0"].shape) == [10, 1]
    assert list(by_name["MeanBackward0"].shape) == []
    # The batch is shown as no-grad INPUT nodes, in the operand slot autograd leaves empty:
    # w * inputs (slot 1 of MulBackward0) and prediction - targets (slot 1 of SubBackward0).
    attached = {
        (response.nodes[e.from_id].name, response.nodes[e.to_id].name, e.slot)
        for e in response.edges
        if not e.carries_gradient
    }
    assert attached == {("MulBackward0", "inputs", 1), ("SubBackward0", "targets", 1)}
    for name in ("inputs", "targets"):
        node = by_name[name]
        assert node.kind == pb.GRAPH_NODE_KIND_INPUT
        assert not node.requires_grad
        assert list(node.shape) == [10, 1]


def test_mlp_graph_matches_a_local_model(make_server, make_stub):
    server = make_server(model="mlp:6-5-4-3")
    stub = make_stub(server)
    values = parameters(stub)
    local = build_mlp([6, 5, 4, 3], ACTIVATIONS["relu"])
    local.load_state_dict(values)
    inputs = torch.rand(7, 6)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    local_loss = torch.nn.functional.cross_entropy(local(inputs), targets)
    named = dict(local.named_parameters())

    response = describe(stub, inputs, targets)
    names, edges = gradient_part(response)
    local_names, local_edges = oracle(local_loss, named)
    assert len(names) == len(local_names)
    leaves = {n.name for n in response.nodes if n.kind == pb.GRAPH_NODE_KIND_PARAMETER}
    assert leaves == set(named) == set(values)
    assert names == local_names
    assert edges == local_edges
    inputs_node = next(n for n in response.nodes if n.name == "inputs")
    targets_node = next(n for n in response.nodes if n.name == "targets")
    assert list(inputs_node.shape) == [7, 6]
    assert targets_node.dtype == pb.DATA_TYPE_INT64
    # Both are attached: inputs to the first layer's Addmm, targets to the loss.
    attached = {
        response.nodes[e.to_id].name: response.nodes[e.from_id].name
        for e in response.edges
        if not e.carries_gradient
    }
    assert attached == {"inputs": "AddmmBackward0", "targets": "NllLossBackward0"}


# -- it changes nothing ---------------------------------------------------------------


@pytest.mark.parametrize("accumulated_before", [False, True])
def test_describe_graph_changes_nothing(server, stub, accumulated_before):
    inputs, targets, initial = first_batch()
    set_parameters(stub, initial)
    if accumulated_before:
        request = pb.ComputeGradientsRequest(
            inputs=tensor_to_proto(inputs[5:]), targets=tensor_to_proto(targets[5:])
        )
        stub.ComputeGradients(request, timeout=TIMEOUT)
    before = server_state(server, stub)
    assert (before["accumulated_batches"] == 1) is accumulated_before

    for return_gradients in (False, True, True):
        describe(stub, inputs, targets, return_gradients=return_gradients)
    assert_same_state(before, server_state(server, stub))
    assert server.store.model.module.training in (True, False)

    # And the next ComputeGradients accumulates exactly as if no graph had been asked for.
    request = pb.ComputeGradientsRequest(
        inputs=tensor_to_proto(inputs), targets=tensor_to_proto(targets)
    )
    response = stub.ComputeGradients(request, timeout=TIMEOUT)
    assert response.accumulated_batches == before["accumulated_batches"] + 1


def test_leaf_gradients_equal_local_autograd_and_compute_gradients(server, stub):
    inputs, targets, initial = first_batch()
    set_parameters(stub, initial)
    response = describe(stub, inputs, targets, return_gradients=True)
    served = {
        n.name: tensor_from_proto(n.gradient).clone()
        for n in response.nodes
        if n.kind == pb.GRAPH_NODE_KIND_PARAMETER
    }

    w = initial["w"].clone().requires_grad_(True)
    b = initial["b"].clone().requires_grad_(True)
    loss = ((w * inputs + b - targets) ** 2).mean()
    grad_w, grad_b = torch.autograd.grad(loss, [w, b])
    torch.testing.assert_close(served["w"], grad_w)
    torch.testing.assert_close(served["b"], grad_b)

    request = pb.ComputeGradientsRequest(
        inputs=tensor_to_proto(inputs), targets=tensor_to_proto(targets), return_gradients=True
    )
    computed = stub.ComputeGradients(request, timeout=TIMEOUT)
    for tensor in computed.gradients:
        assert torch.equal(tensor_from_proto(tensor), served[tensor.name]), tensor.name
    assert computed.loss == response.loss
    for node in response.nodes:
        assert node.HasField("gradient") == (node.kind == pb.GRAPH_NODE_KIND_PARAMETER)


# -- the cap --------------------------------------------------------------------------


def test_graph_over_max_nodes_is_resource_exhausted_naming_max_nodes(server, stub):
    inputs, targets, _ = first_batch()
    before = server_state(server, stub)
    # The linear graph has 9 nodes: 5 backward functions, w, b, inputs, targets.
    assert len(describe(stub, inputs, targets, max_nodes=9).nodes) == 9
    with pytest.raises(grpc.RpcError) as caught:
        describe(stub, inputs, targets, max_nodes=8)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_nodes" in caught.value.details()
    assert "more than 8 nodes" in caught.value.details()
    assert violations(caught.value) == ["max_nodes"]

    with pytest.raises(grpc.RpcError) as caught:
        describe(stub, inputs, targets, max_nodes=-1)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["max_nodes"]

    # Over the server's maximum is lowered to it, not refused.
    assert describe(stub, inputs, targets, max_nodes=2**31 - 1).max_nodes == MAX_NODES
    assert_same_state(before, server_state(server, stub))


def test_build_graph_stops_walking_at_the_cap():
    w = torch.ones(1, requires_grad=True)
    value = w
    for _ in range(5000):
        value = value * 1.0
    with pytest.raises(ResourceExhaustedError) as caught:
        build_graph(value.sum(), {"w": w}, max_nodes=100)
    assert caught.value.field == "max_nodes"


def test_a_node_reached_twice_is_one_node_with_two_edges():
    w = torch.tensor([2.0], requires_grad=True)
    x = torch.tensor([3.0])
    product = w * x
    graph = build_graph((product * product).sum(), {"w": w})
    assert [n.name for n in graph.nodes] == ["SumBackward0", "MulBackward0", "MulBackward0", "w"]
    assert [(e.source, e.target, e.slot) for e in graph.edges] == [
        (0, 1, 0),
        (1, 2, 0),
        (1, 2, 1),
        (2, 3, 0),
    ]


# -- rendering ------------------------------------------------------------------------


@pytest.fixture
def linear_graph(server) -> GraphDescription:
    inputs, targets, initial = first_batch()
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        client.set_parameters(initial)
        return client.describe_graph(inputs, targets, return_gradients=True)


def test_client_describe_graph(linear_graph):
    graph = linear_graph.graph
    assert graph.nodes[graph.root].name == "MeanBackward0"
    kinds = {n.name: n.kind for n in graph.nodes}
    assert kinds["w"] == kinds["b"] == NodeKind.PARAMETER
    assert kinds["inputs"] == kinds["targets"] == NodeKind.INPUT
    assert graph.node("w").gradient.shape == (1,)


def test_tree_shows_the_tutorial_chain_in_order(linear_graph):
    text = client_graph.render_tree(linear_graph)
    lines = text.splitlines()
    assert lines[0].startswith("loss = ")
    positions = [text.index(name) for name in [*TUTORIAL_CHAIN, "w  parameter"]]
    assert positions == sorted(positions)
    # Each step of the chain is one level deeper than the one before.
    depth = {
        line.strip("│├└─ ").split()[0]: len(line) - len(line.lstrip("│├└─ ")) for line in lines[1:]
    }
    chain_depths = [depth[name] for name in [*TUTORIAL_CHAIN, "w"]]
    assert chain_depths == sorted(set(chain_depths))
    assert depth["b"] == depth["MulBackward0"]
    assert depth["inputs"] == depth["w"]
    assert depth["targets"] == depth["AddBackward0"]
    assert "inputs  input [10, 1]  no grad" in text
    assert "targets  input [10, 1]  no grad" in text


@pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="Graphviz `dot` is not installed (scripts/install-graph-deps.sh installs it)",
)
def test_dot_renders_to_a_valid_png(linear_graph, tmp_path: Path):
    source = tmp_path / "graph.dot"
    image = tmp_path / "graph.png"
    source.write_text(client_graph.render_dot(linear_graph))
    subprocess.run(
        ["dot", "-Tpng", str(source), "-o", str(image)], check=True, timeout=60, capture_output=True
    )
    data = image.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100


def test_dot_has_every_node_and_edge(linear_graph):
    text = client_graph.render_dot(linear_graph)
    assert text.startswith("digraph gradserve {")
    for node in linear_graph.graph.nodes:
        assert f"  n{node.id} [label=" in text
    for edge in linear_graph.graph.edges:
        assert f"  n{edge.target} -> n{edge.source}" in text
    dashed = [line for line in text.splitlines() if "->" in line and "dashed" in line]
    assert len(dashed) == 2  # the inputs/targets edges


# -- the command lines ----------------------------------------------------------------


def test_graph_command_prints_the_tree_and_writes_dot(tmp_path: Path, capsys):
    dot = tmp_path / "g.dot"
    assert client_graph.main(["--dot", str(dot)]) == 0
    out = capsys.readouterr().out
    assert "MulBackward0" in out and "w  parameter [1]  grad [" in out
    assert dot.read_text().startswith("digraph gradserve {")


def test_train_show_graph_prints_the_first_batch_graph(tmp_path: Path, capsys):
    dot = tmp_path / "t.dot"
    code = train.main(
        ["--show-graph", "--graph-dot", str(dot), "--epochs", "1", "--metrics-port", "0"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.index("MeanBackward0") < out.index("Epoch 0")
    assert "model version 1" in out
    assert dot.exists()
