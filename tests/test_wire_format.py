"""The hand-written wire format (gradserve.wire_messages) against protobuf itself: what it writes
is byte for byte what the generated messages serialise; what it reads is field for field what
they parse, for well-formed bytes in any field order, and a Problem (never an exception) for
bytes protobuf refuses. Then the same over a real server: its GetParameters and StreamParameters
bytes against messages built the normal way."""

from __future__ import annotations

import struct

import grpc
import pytest
import torch
from helpers import TIMEOUT, field_violations
from hypothesis import given, settings
from hypothesis import strategies as st

from gradserve.chunks import MIN_CHUNK_BYTES
from gradserve.codec import WIRE_TYPES, tensor_from_parts, tensor_to_proto
from gradserve.defaults import SERVICE_NAME, channel_options
from gradserve.errors import InvalidArgumentError
from gradserve.huge_pages import HUGE_PAGE_BYTES, empty_bytes
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.wire_format import MAX_SHAPE_ENTRIES, key, varint
from gradserve.wire_messages import (
    chunk_message,
    get_parameters_response,
    parse_chunk,
    parse_get_parameters_response,
)

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)
CHUNK_FIELDS = (
    "name", "dtype", "shape", "offset", "data", "model_version", "request_id", "run",
)  # fmt: skip


def tensors() -> st.SearchStrategy[torch.Tensor]:
    def build(wire_index: int, shape: list[int], seed: int) -> torch.Tensor:
        dtype = WIRE_TYPES[wire_index].torch_dtype
        generator = torch.Generator().manual_seed(seed)
        values = torch.randn(shape, generator=generator) * 50
        return (values > 0) if dtype is torch.bool else values.to(dtype)

    return st.builds(
        build,
        st.integers(0, len(WIRE_TYPES) - 1),
        st.lists(st.integers(0, 5), max_size=3),
        st.integers(0, 2**16),
    )


names = st.text(max_size=12)
versions = st.integers(-(2**63), 2**63 - 1)


@FUZZ
@given(st.lists(st.tuples(names, tensors()), max_size=4), versions)
def test_get_parameters_response_is_what_protobuf_serialises(named, version) -> None:
    expected = pb.GetParametersResponse(model_version=version)
    for name, tensor in named:
        expected.parameters.append(tensor_to_proto(tensor, name))
    assert get_parameters_response(named, version) == expected.SerializeToString()


@FUZZ
@given(
    st.binary(max_size=64),
    st.integers(-(2**63), 2**63 - 1),
    versions,
    st.none() | st.tuples(names, st.integers(0, 10), st.lists(versions, max_size=4)),
    st.none() | versions,
    names,
    names,
)
def test_chunks_are_what_protobuf_serialises(
    data, offset, version, first, expected_version, request_id, run
) -> None:
    upload = pb.UploadParametersRequest(
        offset=offset, data=data, model_version=version, request_id=request_id, run=run
    )
    if first is not None:
        upload.name, upload.dtype = first[0], first[1]  # type: ignore[assignment]
        upload.shape.extend(first[2])
    if expected_version is not None:
        upload.expected_version = expected_version
    written = chunk_message(
        data,
        offset=offset,
        model_version=version,
        first=first,
        expected_version=expected_version,
        request_id=request_id,
        run=run,
    )
    assert written == upload.SerializeToString()
    # And read back: the same fields as protobuf's own parse of those bytes.
    assert_same_chunk(written)


def assert_same_chunk(message: bytes) -> None:
    reference = pb.UploadParametersRequest.FromString(message)
    parsed = parse_chunk(message)
    assert parsed.problem is None, parsed.problem
    for field in CHUNK_FIELDS:
        ours = getattr(parsed, field)
        theirs = getattr(reference, field)
        assert (bytes(ours) if field == "data" else ours) == (
            list(theirs) if field == "shape" else theirs
        ), field
    has = reference.HasField("expected_version")
    assert parsed.expected_version == (reference.expected_version if has else None)


def test_chunks_parse_as_protobuf_does_out_of_order_unpacked_repeated_and_unknown() -> None:
    message = b"".join(
        (
            key(5, 2) + varint(3) + b"abc",  # data before name
            key(1, 2) + varint(1) + b"x",
            key(1, 2) + varint(1) + b"w",  # a repeated singular field: the last wins
            key(3, 0) + varint(4),  # shape unpacked ...
            key(3, 2) + varint(2) + varint(5) + varint(6),  # ... and packed, appended
            key(2, 0) + varint(2**32 + 1),  # an enum keeps its low 32 bits
            key(99, 0) + varint(7),  # unknown fields of every wire type are skipped
            key(98, 1) + bytes(8),
            key(97, 5) + bytes(4),
            key(96, 2) + varint(2) + b"zz",
            key(4, 2) + varint(1) + b"q",  # offset with the wrong wire type: unknown too
            key(7, 0) + varint(0),  # expected_version 0 is present
        )
    )
    assert_same_chunk(message)
    assert parse_chunk(message).shape == [4, 5, 6]


@FUZZ
@given(st.binary(max_size=80))
def test_arbitrary_bytes_parse_like_protobuf_or_report_a_problem(message) -> None:
    parsed = parse_chunk(message)  # never raises
    try:
        pb.UploadParametersRequest.FromString(message)
    except Exception:
        assert parsed.problem is not None
        with pytest.raises(InvalidArgumentError) as error:
            parsed.checked("chunks[2]")
        assert error.value.field.startswith("chunks[2].")
        return
    if parsed.problem is not None:
        # Only what the parser bounds on purpose: more shape entries than any tensor has.
        assert parsed.problem.field == "shape"
        return
    assert_same_chunk(message)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (key(5, 2) + varint(10) + b"short", "data"),
        (key(1, 2) + varint(2) + b"\xff\xfe", "name"),
        (key(8, 2) + varint(1) + b"\x80", "request_id"),
        (key(4, 0) + b"\xff" * 11, "offset"),
        (key(4, 0) + b"\x80", "offset"),
        (b"\x80", "request"),
        (key(0, 0) + b"\x00", "request"),
        (key(3, 3), "shape"),
        (key(3, 2) + varint(MAX_SHAPE_ENTRIES + 1) + bytes(MAX_SHAPE_ENTRIES + 1), "shape"),
        (key(6, 1) + bytes(3), "model_version"),
    ],
)
def test_malformed_chunks_name_their_field(message: bytes, field: str) -> None:
    problem = parse_chunk(message).problem
    assert problem is not None and problem.field == field, problem


@FUZZ
@given(st.binary(max_size=80))
def test_arbitrary_responses_parse_like_protobuf_or_raise_naming_a_field(message) -> None:
    try:
        reference = pb.GetParametersResponse.FromString(message)
    except Exception:
        with pytest.raises(InvalidArgumentError) as error:
            parse_get_parameters_response(message)
        assert error.value.field
        return
    try:
        version, views = parse_get_parameters_response(message)
    except InvalidArgumentError as error:
        assert error.field.endswith(".shape")  # the bound on shape entries, on purpose
        return
    assert version == reference.model_version
    assert [(v.name, v.dtype, v.shape, bytes(v.data)) for v in views] == [
        (t.name, t.dtype, list(t.shape), t.data) for t in reference.parameters
    ]


def test_misaligned_views_are_copied_and_copies_are_writable() -> None:
    values = torch.arange(6, dtype=torch.float32)
    message = memoryview(b"\0" + values.numpy().tobytes())[1:]  # one byte off
    dtype = int(pb.DATA_TYPE_FLOAT32)
    view = tensor_from_parts(dtype, [2, 3], message)
    assert view.data_ptr() % 4 == 0
    assert torch.equal(view, values.reshape(2, 3))
    owned = tensor_from_parts(dtype, [6], memoryview(values.numpy().tobytes()), copy=True)
    owned += 1  # its own memory: the source is untouched
    assert torch.equal(owned, values + 1)


@pytest.mark.parametrize("size", [0, 5, HUGE_PAGE_BYTES, 3 * HUGE_PAGE_BYTES + 1])
def test_huge_page_buffers_are_writable_tensors_of_their_size(size: int) -> None:
    buffer = empty_bytes(size)
    assert buffer.dtype == torch.uint8 and buffer.numel() == size
    buffer.fill_(7)
    assert int(buffer.sum()) == 7 * size


def raw(running, method: str, kind: str = "unary_unary"):
    channel = grpc.insecure_channel(
        running.address, options=channel_options(running.config.limits.max_message_bytes)
    )
    return channel, getattr(channel, kind)(f"/{SERVICE_NAME}/{method}")


def test_the_servers_get_parameters_bytes_are_protobufs(make_server) -> None:
    server = make_server(model="mlp:3-4-3:tanh:batchnorm")
    channel, call = raw(server, "GetParameters")
    with channel:
        request = pb.GetParametersRequest(include_buffers=True).SerializeToString()
        answer = call(request, timeout=TIMEOUT)
    module = server.store.model.module
    expected = pb.GetParametersResponse(model_version=0)
    for name, value in [*module.named_parameters(), *module.named_buffers()]:
        expected.parameters.append(tensor_to_proto(value, name))
    assert answer == expected.SerializeToString()
    assert pb.GetParametersResponse.FromString(answer) == expected


def test_the_servers_chunks_are_protobufs(make_server) -> None:
    server = make_server(model="mlp:300-200-1")
    channel, call = raw(server, "StreamParameters", "unary_stream")
    request = pb.StreamParametersRequest(chunk_bytes=MIN_CHUNK_BYTES).SerializeToString()
    with channel:
        answers = list(call(request, timeout=TIMEOUT))
    expected = []
    for name, value in server.store.model.module.named_parameters():
        data = value.detach().numpy().tobytes()
        for offset in range(0, len(data), MIN_CHUNK_BYTES):
            chunk = pb.StreamParametersResponse(
                offset=offset, data=data[offset : offset + MIN_CHUNK_BYTES]
            )
            if offset == 0:
                chunk.name, chunk.dtype = name, pb.DATA_TYPE_FLOAT32
                chunk.shape.extend(value.shape)
            expected.append(chunk.SerializeToString())
    assert answers == expected


def test_malformed_upload_chunks_are_invalid_argument_naming_the_chunk_and_field(
    make_server,
) -> None:
    server = make_server(model="linear")
    name, w = next(iter(server.store.model.module.named_parameters()))
    first = chunk_message(
        struct.pack("<f", 2.0), offset=0, first=(name, int(pb.DATA_TYPE_FLOAT32), w.shape)
    )
    broken = key(5, 2) + varint(100) + b"short"
    for chunks, field in (([first, broken], "chunks[1].data"), ([broken], "chunks[0].data")):
        channel, call = raw(server, "UploadParameters", "stream_unary")
        with channel, pytest.raises(grpc.RpcError) as error:
            call(iter(chunks), timeout=TIMEOUT)
        assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error.value) == [field]
        assert "runs past the message's end" in error.value.details()
    assert server.store.version == 0
