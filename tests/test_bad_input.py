"""Every bad input of issue 2: the right status, a message and a BadRequest naming the field,
and the server's parameters, version and accumulated gradients exactly as before."""

from __future__ import annotations

import math

import grpc
import pytest
import torch
from helpers import TIMEOUT, Snapshot, compute, field_violations, linear_batch, set_parameters

from gradserve.codec import tensor_to_proto
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
X, Y = linear_batch(4, torch.Generator().manual_seed(0))
F32 = pb.DATA_TYPE_FLOAT32


def raw(dtype: int, shape: list[int], data: bytes) -> pb.Tensor:
    return pb.Tensor(dtype=dtype, shape=shape, data=data)


def gradients_request(inputs=None, targets=None, **fields) -> pb.ComputeGradientsRequest:
    inputs = tensor_to_proto(X) if inputs is None else inputs
    targets = tensor_to_proto(Y) if targets is None else targets
    if isinstance(inputs, torch.Tensor):
        inputs = tensor_to_proto(inputs)
    if isinstance(targets, torch.Tensor):
        targets = tensor_to_proto(targets)
    return pb.ComputeGradientsRequest(inputs=inputs, targets=targets, **fields)


def with_value(tensor: torch.Tensor, value: float) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[1] = value
    return tensor


# (request, field at fault) for the linear model: inputs [N, 1] float32, targets [N, 1].
LINEAR_CASES = {
    "inputs-unspecified-dtype": (gradients_request(raw(0, [4, 1], bytes(16))), "inputs.dtype"),
    "inputs-unknown-dtype": (gradients_request(raw(77, [4, 1], bytes(16))), "inputs.dtype"),
    "targets-missing": (pb.ComputeGradientsRequest(inputs=tensor_to_proto(X)), "targets.dtype"),
    "inputs-short-data": (gradients_request(raw(F32, [4, 1], bytes(15))), "inputs.data"),
    "targets-long-data": (gradients_request(None, raw(F32, [4, 1], bytes(20))), "targets.data"),
    "inputs-negative-dim": (gradients_request(raw(F32, [-4, 1], b"")), "inputs.shape"),
    "inputs-absurd-dim": (gradients_request(raw(F32, [2**62, 1], b"")), "inputs.shape"),
    "inputs-feature-shape": (gradients_request(torch.zeros(4, 2)), "inputs.shape"),
    "inputs-rank": (gradients_request(torch.zeros(4)), "inputs.shape"),
    "inputs-float64": (gradients_request(X.double()), "inputs.dtype"),
    "batch-mismatch": (gradients_request(X, Y[:3]), "targets.shape"),
    "empty-batch": (gradients_request(torch.zeros(0, 1), torch.zeros(0, 1)), "inputs.shape"),
    "inputs-nan": (gradients_request(with_value(X, math.nan)), "inputs.data"),
    "inputs-inf": (gradients_request(with_value(X, -math.inf)), "inputs.data"),
    "targets-nan": (gradients_request(X, with_value(Y, math.nan)), "targets.data"),
    "targets-inf": (gradients_request(X, with_value(Y, math.inf)), "targets.data"),
    "integer-targets-for-mse": (gradients_request(X, Y.long()), "targets.dtype"),
    "request-id-too-long": (gradients_request(request_id="r" * 129), "request_id"),
    "bool-data": (gradients_request(raw(pb.DATA_TYPE_BOOL, [4, 1], b"\x02" * 4)), "inputs.data"),
}


@pytest.fixture
def busy(server, stub):
    """The default server with one batch accumulated, so that gradients exist to be kept."""
    compute(stub, X, Y)
    return server, stub


def assert_rejected(
    server, stub, call, code: grpc.StatusCode, field: str, *, details: bool = True
) -> grpc.RpcError:
    before = Snapshot.take(server, stub)
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert error.code() == code, error.details()
    if details:
        assert field in error.details()
        assert field in field_violations(error)
    Snapshot.take(server, stub).assert_same(before)
    return error


@pytest.mark.parametrize(("request_message", "field"), LINEAR_CASES.values(), ids=LINEAR_CASES)
def test_bad_compute_gradients(busy, request_message, field) -> None:
    server, stub = busy
    assert_rejected(
        server,
        stub,
        lambda: stub.ComputeGradients(request_message, timeout=TIMEOUT),
        INVALID,
        field,
    )


# Evaluate has no request_id and takes a request without targets.
EVALUATE_CASES = {
    name: case
    for name, case in LINEAR_CASES.items()
    if name not in ("request-id-too-long", "targets-missing")
}


@pytest.mark.parametrize(("request_message", "field"), EVALUATE_CASES.values(), ids=EVALUATE_CASES)
def test_bad_evaluate(busy, request_message, field) -> None:
    server, stub = busy
    request = pb.EvaluateRequest(inputs=request_message.inputs, targets=request_message.targets)
    assert_rejected(server, stub, lambda: stub.Evaluate(request, timeout=TIMEOUT), INVALID, field)


@pytest.mark.parametrize(
    ("loss", "targets", "field"),
    [
        ("cross_entropy", torch.zeros(4), "targets.dtype"),  # float targets
        ("cross_entropy", torch.tensor([0, 1, 3, 2]), "targets.data"),  # class 3 of 3
        ("cross_entropy", torch.tensor([0, -1, 2, 2]), "targets.data"),
        ("cross_entropy", torch.zeros(4, 1, dtype=torch.int64), "targets.shape"),
        ("mse", torch.zeros(4, 3, dtype=torch.int64), "targets.dtype"),  # integer targets
        ("mse", torch.zeros(4, 2), "targets.shape"),
    ],
)
def test_bad_targets_for_mlp(make_server, make_stub, loss, targets, field) -> None:
    server = make_server(model="mlp:2-4-3", loss=loss)
    stub = make_stub(server)
    inputs = torch.randn(4, 2)
    compute(
        stub, inputs, torch.tensor([0, 1, 2, 0]) if loss == "cross_entropy" else torch.ones(4, 3)
    )
    request = gradients_request(inputs, targets)
    assert_rejected(
        server, stub, lambda: stub.ComputeGradients(request, timeout=TIMEOUT), INVALID, field
    )


@pytest.mark.parametrize("learning_rate", [math.nan, math.inf, -math.inf, -0.1])
def test_bad_learning_rate(busy, learning_rate) -> None:
    server, stub = busy
    request = pb.ApplyUpdateRequest(learning_rate=learning_rate)
    assert_rejected(
        server,
        stub,
        lambda: stub.ApplyUpdate(request, timeout=TIMEOUT),
        INVALID,
        "learning_rate",
    )


def test_unknown_reduction(busy) -> None:
    server, stub = busy
    request = pb.ApplyUpdateRequest(learning_rate=0.1, reduction=9)
    assert_rejected(
        server, stub, lambda: stub.ApplyUpdate(request, timeout=TIMEOUT), INVALID, "reduction"
    )


def test_request_id_too_long_on_apply_and_set(busy) -> None:
    server, stub = busy
    calls = [
        lambda: stub.ApplyUpdate(
            pb.ApplyUpdateRequest(learning_rate=0.1, request_id="é" * 65), timeout=TIMEOUT
        ),
        lambda: set_parameters(stub, {"w": torch.ones(1)}, request_id="x" * 129),
    ]
    for call in calls:
        assert_rejected(server, stub, call, INVALID, "request_id")


SET_CASES = {
    "unknown-name": ({"v": torch.ones(1)}, "parameters[0].name"),
    "duplicate": ([("w", torch.ones(1)), ("w", torch.ones(1))], "parameters[1].name"),
    "shape": ({"b": torch.ones(2)}, "parameters[0].shape"),
    "scalar-shape": ({"w": torch.tensor(1.0)}, "parameters[0].shape"),
    "dtype": ({"w": torch.ones(1, dtype=torch.float64)}, "parameters[0].dtype"),
    "nan": ({"w": torch.ones(1), "b": torch.tensor([math.nan])}, "parameters[1].data"),
    "inf": ({"w": torch.tensor([math.inf])}, "parameters[0].data"),
    "empty": ({}, "parameters"),
}


@pytest.mark.parametrize(("values", "field"), SET_CASES.values(), ids=SET_CASES)
def test_bad_set_parameters(busy, values, field) -> None:
    server, stub = busy
    items = values.items() if isinstance(values, dict) else values
    request = pb.SetParametersRequest(
        parameters=[tensor_to_proto(value, name) for name, value in items]
    )
    assert_rejected(
        server, stub, lambda: stub.SetParameters(request, timeout=TIMEOUT), INVALID, field
    )


def test_set_parameters_malformed_tensor(busy) -> None:
    server, stub = busy
    request = pb.SetParametersRequest(
        parameters=[tensor_to_proto(torch.ones(1), "w"), pb.Tensor(name="b", dtype=F32, shape=[1])]
    )
    assert_rejected(
        server,
        stub,
        lambda: stub.SetParameters(request, timeout=TIMEOUT),
        INVALID,
        "parameters[1].data",
    )


def test_get_parameters_unknown_name(busy) -> None:
    server, stub = busy
    request = pb.GetParametersRequest(names=["w", "nope"])
    assert_rejected(
        server, stub, lambda: stub.GetParameters(request, timeout=TIMEOUT), INVALID, "names[1]"
    )


def test_batch_over_max_batch_elements_is_resource_exhausted(make_server, make_stub) -> None:
    server = make_server(max_batch_elements=8)
    stub = make_stub(server)
    compute(stub, X, Y)
    inputs, targets = linear_batch(9)
    request = gradients_request(inputs, targets)
    assert_rejected(
        server, stub, lambda: stub.ComputeGradients(request, timeout=TIMEOUT), EXHAUSTED,
        "inputs.shape",
    )  # fmt: skip


def test_message_over_the_size_limit_is_resource_exhausted(make_server, make_stub) -> None:
    server = make_server(max_message_bytes=64 * 1024)
    stub = make_stub(server)
    compute(stub, X, Y)
    inputs, targets = linear_batch(20_000)  # 160 kB of float32
    # A channel that sends more than the server takes: the server, not the client, must refuse.
    with grpc.insecure_channel(
        server.address, options=[("grpc.max_send_message_length", 1 << 24)]
    ) as channel:
        big = pb_grpc.GradientServiceStub(channel)
        request = gradients_request(inputs, targets)
        assert_rejected(
            server,
            stub,
            lambda: big.ComputeGradients(request, timeout=TIMEOUT),
            EXHAUSTED,
            "",
            details=False,
        )


@pytest.mark.parametrize("how", ["huge-inputs", "huge-parameters"])
def test_loss_that_turns_inf_is_rejected_and_not_accumulated(busy, how) -> None:
    server, stub = busy
    inputs = X
    if how == "huge-inputs":
        inputs = torch.full((4, 1), 1e30)
    else:
        set_parameters(stub, {"w": torch.tensor([3e38])})
        compute(stub, torch.full((4, 1), 1e-30), torch.zeros(4, 1))  # finite: leaves a gradient
    request = gradients_request(inputs, Y)
    error = assert_rejected(
        server,
        stub,
        lambda: stub.ComputeGradients(request, timeout=TIMEOUT),
        grpc.StatusCode.FAILED_PRECONDITION,
        "inputs",
    )
    assert "loss" in error.details()
