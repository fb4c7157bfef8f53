"""Sizes are checked before anything is copied: repeated names, tiny chunks, responses past the
message limit are refused up front, naming the field, and change nothing."""

from __future__ import annotations

import grpc
import pytest
import torch
from helpers import TIMEOUT, Snapshot, field_violations

from gradserve.chunks import MIN_CHUNK_BYTES, tensor_to_chunks
from gradserve.codec import encoded_tensor_bytes, tensor_to_proto
from gradserve.errors import InvalidArgumentError, ResourceExhaustedError
from gradserve.server.store.parameter_access import check_names
from gradserve.v1 import gradserve_pb2 as pb

# 32 * 1024 float32 weights: 128 KiB, two chunks at the minimum chunk size.
WIDE = "mlp:32-1024-2"
LIMIT = 64 * 1024  # under the model's 140 KiB


def rejected(call, code: grpc.StatusCode, field: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, caught.value.details()
    assert field_violations(caught.value) == [field]
    return caught.value


def classifier_batch(size: int = 4) -> pb.ComputeGradientsRequest:
    generator = torch.Generator().manual_seed(0)
    return pb.ComputeGradientsRequest(
        inputs=tensor_to_proto(torch.rand(size, 32, generator=generator)),
        targets=tensor_to_proto(torch.randint(0, 2, (size,), generator=generator)),
        return_gradients=True,
    )


@pytest.mark.parametrize("rpc", ["GetParameters", "StreamParameters"])
def test_repeated_names_are_invalid(server, stub, rpc) -> None:
    names = ["w"] * 500
    call = {
        "GetParameters": lambda: stub.GetParameters(
            pb.GetParametersRequest(names=names), timeout=TIMEOUT
        ),
        "StreamParameters": lambda: list(
            stub.StreamParameters(pb.StreamParametersRequest(names=names), timeout=TIMEOUT)
        ),
    }[rpc]
    error = rejected(call, grpc.StatusCode.INVALID_ARGUMENT, "names[1]")
    assert "twice" in error.details()


def test_names_and_sizes_are_checked_from_shapes_before_any_read() -> None:
    named = {"w": torch.zeros(1000, 1000), "b": torch.zeros(3)}
    with pytest.raises(InvalidArgumentError) as caught:
        check_names(named, ["b", "w", "w"], max_bytes=10**9)
    assert caught.value.field == "names[2]"
    with pytest.raises(ResourceExhaustedError) as exhausted:
        check_names(named, ["w"], max_bytes=4_000_000)
    assert exhausted.value.field == "names"
    assert check_names(named, ["b"], max_bytes=4096) == ["b"]
    assert check_names(named, [], max_bytes=None) == ["w", "b"]


@pytest.mark.parametrize(
    ("name", "tensor"),
    [
        ("w", torch.zeros(3, 4)),
        ("layers.0.weight", torch.zeros(1024, 33, dtype=torch.float16)),
        ("", torch.zeros(())),
        ("e", torch.zeros(0, 7, dtype=torch.int64)),
        ("big", torch.zeros(2**21, dtype=torch.uint8)),
    ],
)
def test_the_size_bound_is_never_below_the_encoded_size(name, tensor) -> None:
    response = pb.GetParametersResponse(model_version=2**40)
    response.parameters.append(tensor_to_proto(tensor, name))
    bound = encoded_tensor_bytes(name, tensor.dtype, tensor.shape)
    assert len(response.SerializeToString()) <= bound + 16


def test_get_parameters_past_the_message_limit_names_the_field(make_server, make_stub) -> None:
    server = make_server(model=WIDE, max_message_bytes=LIMIT)
    stub = make_stub(server)
    error = rejected(
        lambda: stub.GetParameters(pb.GetParametersRequest(), timeout=TIMEOUT),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "names",
    )
    assert "StreamParameters" in error.details()
    small = stub.GetParameters(pb.GetParametersRequest(names=["2.bias"]), timeout=TIMEOUT)
    assert [p.name for p in small.parameters] == ["2.bias"]


@pytest.mark.parametrize("mode", ["direct", "async"])
def test_return_gradients_past_the_limit_is_refused_before_accumulating(
    make_server, make_stub, mode
) -> None:
    server = make_server(model=WIDE, max_message_bytes=LIMIT, mode=mode)
    stub = make_stub(server)
    error = rejected(
        lambda: stub.ComputeGradients(classifier_batch(), timeout=TIMEOUT),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "return_gradients",
    )
    assert "nothing was accumulated" in error.details()
    # (Snapshot.take would read every parameter, itself past this limit.)
    assert server.store.info().accumulated_batches == 0
    assert all(gradient is None for gradient in server.store.gradients().values())


def test_tiny_chunk_sizes_are_raised_to_the_minimum(make_server, make_stub) -> None:
    server = make_server(model=WIDE)
    stub = make_stub(server)
    request = pb.StreamParametersRequest(names=["0.weight"], chunk_bytes=1024)
    chunks = list(stub.StreamParameters(request, timeout=TIMEOUT))
    weight = server.store.model.module.state_dict()["0.weight"]
    size = weight.numel() * weight.element_size()
    assert len(chunks) == -(-size // MIN_CHUNK_BYTES) == 2
    streamed = b"".join(chunk.data for chunk in chunks)
    assert streamed == weight.numpy().tobytes()


def test_streamed_chunks_are_one_snapshot_even_if_the_model_moves(make_server, make_stub) -> None:
    server = make_server(model=WIDE)
    stub = make_stub(server)
    expected = server.store.model.module.state_dict()["0.weight"].clone()
    request = pb.StreamParametersRequest(names=["0.weight"], chunk_bytes=MIN_CHUNK_BYTES)
    stream = stub.StreamParameters(request, timeout=TIMEOUT)
    first = next(stream)
    # The lock is free while the stream is open: an update runs between its chunks.
    request = classifier_batch()
    request.return_gradients = False
    stub.ComputeGradients(request, timeout=TIMEOUT)
    stub.ApplyUpdate(pb.ApplyUpdateRequest(learning_rate=1.0), timeout=TIMEOUT)
    data = first.data + b"".join(chunk.data for chunk in stream)
    assert data == expected.numpy().tobytes()
    assert server.store.version == 1


def upload(stub, chunks) -> pb.UploadParametersResponse:
    return stub.UploadParameters(iter(chunks), timeout=TIMEOUT)


def test_uploads_of_tiny_chunks_are_bounded_in_count(make_server, make_stub) -> None:
    server = make_server(model=WIDE)
    stub = make_stub(server)
    weight = torch.ones(1024, 32)
    chunks = list(tensor_to_chunks("0.weight", weight, 256, message=pb.UploadParametersRequest))
    before = Snapshot.take(server, stub)
    error = rejected(lambda: upload(stub, chunks), grpc.StatusCode.RESOURCE_EXHAUSTED, "chunks[6]")
    assert "larger chunks" in error.details()
    Snapshot.take(server, stub).assert_same(before)
    # At the minimum chunk size the same upload goes through.
    good = tensor_to_chunks("0.weight", weight, MIN_CHUNK_BYTES, message=pb.UploadParametersRequest)
    assert upload(stub, good).model_version == 1


def test_uploads_refuse_empty_chunks_after_the_first(make_server, make_stub) -> None:
    server = make_server()
    stub = make_stub(server)
    first = next(tensor_to_chunks("w", torch.ones(1), message=pb.UploadParametersRequest))
    empty = pb.UploadParametersRequest(offset=4)
    before = Snapshot.take(server, stub)
    rejected(
        lambda: upload(stub, [first] + [empty] * 3),
        grpc.StatusCode.INVALID_ARGUMENT,
        "chunks[1].data",
    )
    Snapshot.take(server, stub).assert_same(before)
