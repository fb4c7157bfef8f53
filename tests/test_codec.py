"""gradserve.codec: round trips for every DataType, and the byte layout pinned byte for byte."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradserve.codec import MAX_DIMENSION, MAX_RANK, WIRE_TYPES, tensor_from_proto, tensor_to_proto
from gradserve.errors import InvalidArgumentError, ResourceExhaustedError
from gradserve.v1 import gradserve_pb2 as pb

DTYPES = [wire.torch_dtype for wire in WIRE_TYPES]


def sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=generator) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=generator, dtype=torch.int64).to(
        dtype
    )


def test_every_proto_data_type_has_a_wire_type() -> None:
    on_wire = {wire.proto for wire in WIRE_TYPES}
    declared = set(pb.DataType.values()) - {pb.DATA_TYPE_UNSPECIFIED}
    assert on_wire == declared


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (1,), (3, 4), (2, 0, 3), (2, 3, 1, 2)], ids=str)
def test_round_trip(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    tensor = sample(dtype, shape)
    message = tensor_to_proto(tensor, "p")
    assert (message.name, list(message.shape)) == ("p", list(shape))
    assert len(message.data) == tensor.numel() * tensor.element_size()
    back = tensor_from_proto(pb.Tensor.FromString(message.SerializeToString()))
    assert back.dtype == dtype
    assert back.shape == tensor.shape
    assert torch.equal(back, tensor)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_input_is_sent_row_major(dtype: torch.dtype) -> None:
    tensor = sample(dtype, (4, 6)).t()[::2]
    assert not tensor.is_contiguous()
    back = tensor_from_proto(tensor_to_proto(tensor))
    assert torch.equal(back, tensor)
    assert tensor_to_proto(tensor).data == tensor_to_proto(tensor.contiguous()).data


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_kind_of_cpu_tensor_encodes_as_its_plain_copy(dtype: torch.dtype) -> None:
    # tensor_into_proto takes a shorter path for contiguous CPU tensors: each kind of tensor
    # it might take (or must not take) gives the bytes of a fresh contiguous copy.
    base = sample(dtype, (3, 5))
    kinds = [base, base[1:], base[1], base[0, 2], base[:0], base.t(), base[:, ::2]]
    if dtype.is_floating_point:
        kinds.append(base.clone().requires_grad_(True))
    for tensor in kinds:
        plain = tensor.detach().clone().contiguous()
        message = tensor_to_proto(tensor, "t")
        assert message == tensor_to_proto(plain, "t")
        assert torch.equal(tensor_from_proto(message), plain)


@pytest.mark.parametrize(
    ("tensor", "data"),
    [
        (torch.tensor(1.0), b"\x00\x00\x80\x3f"),
        (torch.tensor([1.0, -2.0], dtype=torch.float64), struct.pack("<2d", 1.0, -2.0)),
        (torch.tensor([1.0, -2.0], dtype=torch.float16), struct.pack("<2e", 1.0, -2.0)),
        (torch.tensor([1, -2], dtype=torch.int64), struct.pack("<2q", 1, -2)),
        (torch.tensor([1, -2], dtype=torch.int32), struct.pack("<2i", 1, -2)),
        (torch.tensor([1, -2], dtype=torch.int16), struct.pack("<2h", 1, -2)),
        (torch.tensor([1, -2], dtype=torch.int8), b"\x01\xfe"),
        (torch.tensor([1, 255], dtype=torch.uint8), b"\x01\xff"),
        (torch.tensor([True, False, True]), b"\x01\x00\x01"),
        (torch.tensor([[1.0, 2.0], [3.0, 4.0]]), struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)),
    ],
    ids=lambda value: str(value.dtype) if isinstance(value, torch.Tensor) else "",
)
def test_byte_layout(tensor: torch.Tensor, data: bytes) -> None:
    message = tensor_to_proto(tensor)
    assert message.data == data
    assert list(message.shape) == list(tensor.shape)
    assert torch.equal(tensor_from_proto(message), tensor)


def test_bfloat16_is_the_upper_half_of_float32() -> None:
    values = torch.tensor([1.0, -2.5, 3.140625, 0.0])  # exactly representable in bfloat16
    as_float32 = struct.pack("<4f", *values.tolist())
    upper_halves = b"".join(as_float32[i + 2 : i + 4] for i in range(0, 16, 4))
    message = tensor_to_proto(values.to(torch.bfloat16))
    assert message.data == upper_halves
    assert message.dtype == pb.DATA_TYPE_BFLOAT16
    assert torch.equal(tensor_from_proto(message).float(), values)


def wire(dtype: int, shape: list[int], data: bytes) -> pb.Tensor:
    return pb.Tensor(dtype=dtype, shape=shape, data=data)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (wire(pb.DATA_TYPE_FLOAT32, [2], b"\x00" * 7), "x.data"),
        (wire(pb.DATA_TYPE_FLOAT32, [2], b"\x00" * 9), "x.data"),
        (wire(pb.DATA_TYPE_FLOAT32, [], b""), "x.data"),
        (wire(pb.DATA_TYPE_FLOAT32, [0], b"\x00" * 4), "x.data"),
        (wire(pb.DATA_TYPE_UNSPECIFIED, [1], b"\x00" * 4), "x.dtype"),
        (wire(99, [1], b"\x00" * 4), "x.dtype"),
        (wire(pb.DATA_TYPE_FLOAT32, [2, -1], b""), "x.shape"),
        (wire(pb.DATA_TYPE_FLOAT32, [MAX_DIMENSION + 1], b""), "x.shape"),
        (wire(pb.DATA_TYPE_FLOAT32, [2**62, 2**62], b""), "x.shape"),
        (wire(pb.DATA_TYPE_FLOAT32, [1] * (MAX_RANK + 1), b"\x00" * 4), "x.shape"),
        (wire(pb.DATA_TYPE_BOOL, [3], b"\x01\x02\x00"), "x.data"),
        (wire(pb.DATA_TYPE_BOOL, [1], b"\xff"), "x.data"),
    ],
    ids=[
        "short",
        "long",
        "scalar-empty",
        "empty-with-bytes",
        "unspecified",
        "unknown",
        "negative",
        "absurd",
        "overflowing",
        "rank",
        "bool-2",
        "bool-ff",
    ],
)
def test_malformed_tensor_is_invalid_argument(message: pb.Tensor, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        tensor_from_proto(message, "x")
    assert caught.value.field == field
    assert field in caught.value.message


def test_huge_dimensions_pass_when_the_tensor_is_empty() -> None:
    tensor = tensor_from_proto(wire(pb.DATA_TYPE_FLOAT32, [0, MAX_DIMENSION], b""))
    assert tensor.shape == (0, MAX_DIMENSION)


def test_max_rank_is_accepted() -> None:
    shape = [1] * MAX_RANK
    assert tensor_from_proto(wire(pb.DATA_TYPE_INT8, shape, b"\x05")).shape == tuple(shape)


def test_max_elements_is_resource_exhausted_before_reading_data() -> None:
    message = wire(pb.DATA_TYPE_FLOAT32, [10, 11], b"")
    with pytest.raises(ResourceExhaustedError) as caught:
        tensor_from_proto(message, "inputs", max_elements=100)
    assert caught.value.field == "inputs.shape"
    exact = tensor_to_proto(torch.zeros(10, 10))
    assert tensor_from_proto(exact, max_elements=100).shape == (10, 10)


def test_encoding_an_unsupported_dtype_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        tensor_to_proto(torch.zeros(2, dtype=torch.complex64))


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 4), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(dtype: torch.dtype, shape: list[int], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    # Arbitrary bit patterns (NaN payloads, subnormals, -0.0 included) must survive unchanged.
    itemsize = torch.empty(0, dtype=dtype).element_size()
    count = 1
    for dim in shape:
        count *= dim
    raw = torch.randint(0, 256, (count * itemsize,), generator=generator, dtype=torch.uint8)
    if dtype is torch.bool:
        raw = raw % 2
    tensor = raw.view(dtype).reshape(shape)
    message = tensor_to_proto(tensor)
    assert message.data == raw.numpy().tobytes()
    back = tensor_from_proto(pb.Tensor.FromString(message.SerializeToString()))
    assert (back.dtype, back.shape) == (dtype, tensor.shape)
    assert tensor_to_proto(back).data == message.data
