"""Where bytes become tensors: the one conversion between gradserve.v1.Tensor and torch.Tensor.

Layout (see proto/gradserve/v1/gradserve.proto): row-major, no padding, fixed-width
little-endian elements, bool as one byte 0/1, bfloat16 as the upper half of a float32.
Decoding is zero-copy on little-endian hosts (the tensor is a read-only view of the message's
bytes); encoding makes the one copy protobuf requires.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from gradserve.errors import InvalidArgumentError, ResourceExhaustedError
from gradserve.v1 import gradserve_pb2 as pb

# Rank and per-dimension bounds: far past any real tensor, small enough that arithmetic on
# shapes stays cheap and that torch never sees a dimension it cannot index.
MAX_RANK = 16
MAX_DIMENSION = 2**40

_LITTLE_ENDIAN_HOST = sys.byteorder == "little"

# torch warns once per process that frombuffer over immutable bytes gives a tensor it cannot
# protect from writes. Decoded tensors are only ever read (writers clone), so spend that one
# warning here, silently, instead of in a user's server log.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    torch.frombuffer(b"\0", dtype=torch.uint8)


@dataclass(frozen=True)
class WireType:
    proto: pb.DataType
    torch_dtype: torch.dtype
    itemsize: int
    name: str


WIRE_TYPES: tuple[WireType, ...] = (
    WireType(pb.DATA_TYPE_FLOAT32, torch.float32, 4, "FLOAT32"),
    WireType(pb.DATA_TYPE_FLOAT64, torch.float64, 8, "FLOAT64"),
    WireType(pb.DATA_TYPE_FLOAT16, torch.float16, 2, "FLOAT16"),
    WireType(pb.DATA_TYPE_BFLOAT16, torch.bfloat16, 2, "BFLOAT16"),
    WireType(pb.DATA_TYPE_INT64, torch.int64, 8, "INT64"),
    WireType(pb.DATA_TYPE_INT32, torch.int32, 4, "INT32"),
    WireType(pb.DATA_TYPE_INT16, torch.int16, 2, "INT16"),
    WireType(pb.DATA_TYPE_INT8, torch.int8, 1, "INT8"),
    WireType(pb.DATA_TYPE_UINT8, torch.uint8, 1, "UINT8"),
    WireType(pb.DATA_TYPE_BOOL, torch.bool, 1, "BOOL"),
)
_BY_PROTO: dict[int, WireType] = {int(w.proto): w for w in WIRE_TYPES}
_BY_TORCH = {w.torch_dtype: w for w in WIRE_TYPES}
_KNOWN_NAMES = ", ".join(w.name for w in WIRE_TYPES)


def dtype_to_proto(dtype: torch.dtype) -> pb.DataType:
    """The DataType value of a torch dtype; TypeError for dtypes the wire has no name for."""
    try:
        return _BY_TORCH[dtype].proto
    except KeyError:
        raise TypeError(f"{dtype} has no gradserve.v1 DataType") from None


def dtype_from_proto(value: int, field: str = "dtype") -> torch.dtype:
    return _wire_type(value, field).torch_dtype


def dtype_name(value: int) -> str:
    wire = _BY_PROTO.get(value)
    return wire.name if wire else f"DataType({value})"


def torch_dtype_name(dtype: torch.dtype) -> str:
    """The wire name of a torch dtype ("FLOAT32"), for messages."""
    wire = _BY_TORCH.get(dtype)
    return wire.name if wire else str(dtype)


def _wire_type(value: int, field: str) -> WireType:
    wire = _BY_PROTO.get(value)
    if wire is None:
        kind = "unspecified" if value == pb.DATA_TYPE_UNSPECIFIED else f"unknown ({value})"
        raise InvalidArgumentError(
            f"{field}: data type is {kind}; expected one of {_KNOWN_NAMES}", field=field
        )
    return wire


def tensor_to_proto(tensor: torch.Tensor, name: str = "") -> pb.Tensor:
    """Encode a tensor (any device, any strides) as a gradserve.v1.Tensor."""
    return tensor_into_proto(tensor, pb.Tensor(), name)


def tensor_into_proto(tensor: torch.Tensor, message: pb.Tensor, name: str = "") -> pb.Tensor:
    """Encode into an existing message, e.g. `response.parameters.add()`: building a repeated
    field from a list of messages would copy every tensor's bytes once more."""
    wire = _BY_TORCH.get(tensor.dtype)
    if wire is None:
        raise TypeError(f"{tensor.dtype} has no gradserve.v1 DataType")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if not _LITTLE_ENDIAN_HOST and wire.itemsize > 1:
        flat = _swap_bytes(flat)
    message.name = name
    message.dtype = wire.proto
    message.shape[:] = tensor.shape
    # A uint8 view reads every dtype, bfloat16 included, which numpy itself cannot hold.
    message.data = flat.view(torch.uint8).numpy().tobytes()
    return message


def tensor_from_proto(
    message: pb.Tensor, field: str = "tensor", max_elements: int | None = None
) -> torch.Tensor:
    """Decode a gradserve.v1.Tensor, checking every field; errors name `field`.

    The result is a read-only view of the message's bytes: copy it before writing to it.
    """
    wire = _wire_type(message.dtype, f"{field}.dtype")
    shape = decode_shape(message.shape, f"{field}.shape")
    numel = math.prod(shape)
    if max_elements is not None and numel > max_elements:
        raise ResourceExhaustedError(
            f"{field}.shape: {numel} elements is over the server's limit of {max_elements}",
            field=f"{field}.shape",
        )
    data = message.data  # read once: the upb backend builds a new object on every access
    expected = numel * wire.itemsize
    if len(data) != expected:
        raise InvalidArgumentError(
            f"{field}.data: {len(data)} bytes, expected {expected} "
            f"({numel} elements of {wire.name} for shape {list(shape)})",
            field=f"{field}.data",
        )
    if numel == 0:
        # An empty tensor still has strides: the product of its other dimensions must fit
        # torch's int64 ("Stride calculation overflowed" otherwise, found by tests/test_fuzz.py).
        if math.prod(max(dim, 1) for dim in shape) >= 2**63:
            raise InvalidArgumentError(
                f"{field}.shape: {list(shape)} is too large to describe even an empty tensor",
                field=f"{field}.shape",
            )
        return torch.empty(shape, dtype=wire.torch_dtype)
    tensor = torch.frombuffer(data, dtype=wire.torch_dtype).reshape(shape)
    if wire.torch_dtype is torch.bool and bool(
        (torch.frombuffer(data, dtype=torch.uint8) > 1).any()
    ):
        raise InvalidArgumentError(
            f"{field}.data: BOOL elements must be the bytes 0x00 or 0x01", field=f"{field}.data"
        )
    if not _LITTLE_ENDIAN_HOST and wire.itemsize > 1:
        tensor = _swap_bytes(tensor.clone())
    return tensor


def decode_shape(dims: Iterable[int], field: str) -> tuple[int, ...]:
    shape = tuple(dims)
    if len(shape) > MAX_RANK:
        raise InvalidArgumentError(
            f"{field}: rank {len(shape)} is over the limit of {MAX_RANK}", field=field
        )
    for dim in shape:
        if dim < 0 or dim > MAX_DIMENSION:
            raise InvalidArgumentError(
                f"{field}: dimension {dim} in {list(shape)} is out of range [0, {MAX_DIMENSION}]",
                field=field,
            )
    return shape


def encoded_tensor_bytes(name: str, dtype: torch.dtype, shape: Sequence[int]) -> int:
    """An upper bound on the bytes a Tensor message takes inside a repeated field, from its
    name, dtype and shape alone: sizes are checked before anything is copied."""
    data = math.prod(shape) * _BY_TORCH[dtype].itemsize
    # Tags, lengths and the dtype are a few bytes each; a shape dimension at most 11.
    return data + len(name.encode()) + 11 * len(shape) + 64


def tensors_to_proto(named: Iterable[tuple[str, torch.Tensor]]) -> list[pb.Tensor]:
    return [tensor_to_proto(tensor, name) for name, tensor in named]


def spec_to_proto(name: str, dtype: torch.dtype, shape: Sequence[int]) -> pb.TensorSpec:
    return pb.TensorSpec(name=name, dtype=dtype_to_proto(dtype), shape=shape)


def _swap_bytes(tensor: torch.Tensor) -> torch.Tensor:
    # Only reached on big-endian hosts: reverse each element's bytes.
    itemsize = tensor.element_size()
    as_bytes = tensor.contiguous().view(torch.uint8).reshape(-1, itemsize).flip(1)
    return as_bytes.contiguous().view(tensor.dtype).reshape(tensor.shape)


DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
# The server cuts no chunk smaller than this (unless the parameter itself is), and an upload
# may have no more chunks than cutting at this size gives: a tiny chunk size cannot make one
# call cost millions of messages.
MIN_CHUNK_BYTES = 64 * 1024


def max_chunks(sizes: Iterable[int]) -> int:
    """The most chunks parameters of these byte sizes may take: one each, plus one per
    MIN_CHUNK_BYTES of their data."""
    return sum(1 + size // MIN_CHUNK_BYTES for size in sizes)


# The chunk messages of StreamParameters (server to client) and UploadParameters (client to
# server): the same fields, so one pair of functions serves both directions.
Chunk = pb.StreamParametersResponse | pb.UploadParametersRequest
ChunkT = TypeVar("ChunkT", pb.StreamParametersResponse, pb.UploadParametersRequest)


def tensor_to_chunks(
    name: str,
    tensor: torch.Tensor,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    model_version: int = 0,
    message: type[ChunkT] = pb.StreamParametersResponse,  # type: ignore[assignment]
) -> Iterator[ChunkT]:
    """A tensor as chunk messages of at most chunk_bytes each (at least one chunk), cut one
    at a time as they are consumed."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes: {chunk_bytes}, expected at least 1")
    wire = _BY_TORCH.get(tensor.dtype)
    if wire is None:
        raise TypeError(f"{tensor.dtype} has no gradserve.v1 DataType")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if not _LITTLE_ENDIAN_HOST and wire.itemsize > 1:
        flat = _swap_bytes(flat)
    raw = flat.view(torch.uint8)
    total = raw.numel()
    offset = 0
    while True:
        piece = raw[offset : offset + chunk_bytes].numpy().tobytes()
        chunk = message(offset=offset, data=piece, model_version=model_version)
        if offset == 0:
            chunk.name = name
            chunk.dtype = wire.proto
            chunk.shape.extend(tensor.shape)
        yield chunk
        offset += len(piece)
        if offset >= total:
            return


class ChunkAssembler:
    """Collects chunk messages back into tensors, one copy per byte: each parameter's bytes
    land in a tensor allocated once, at their offset.

    With `expected` (name -> (dtype, shape), the server's side), each chunk is checked as it
    arrives, so a bad upload fails early and cannot grow past the model's own size. Without it
    (the client reading its own server's answer), the first chunk's dtype and shape are used."""

    def __init__(
        self, expected: dict[str, tuple[torch.dtype, tuple[int, ...]]] | None = None
    ) -> None:
        self._expected = expected
        self._buffers: dict[str, tuple[torch.Tensor, torch.dtype, tuple[int, ...]]] = {}
        self._filled: dict[str, int] = {}
        self._current: str | None = None
        self._chunks = 0
        self._max_chunks: int | None = None
        if expected is not None:
            self._max_chunks = max_chunks(
                math.prod(shape) * _BY_TORCH[dtype].itemsize for dtype, shape in expected.values()
            )

    def add(self, chunk: Chunk) -> None:
        field = f"chunks[{self._chunks}]"
        self._chunks += 1
        if self._max_chunks is not None and self._chunks > self._max_chunks:
            raise ResourceExhaustedError(
                f"{field}: more than {self._max_chunks} chunks, the most this model's parameters "
                f"take (one each, plus one per {MIN_CHUNK_BYTES} bytes): send larger chunks",
                field=field,
            )
        if chunk.name:
            self._start(chunk, field)
        if self._current is None:
            raise InvalidArgumentError(
                f"{field}.name: the first chunk must name its parameter", field=f"{field}.name"
            )
        name = self._current
        buffer = self._buffers[name][0]
        filled = self._filled[name]
        if chunk.offset != filled:
            raise InvalidArgumentError(
                f"{field}.offset: {chunk.offset}, expected {filled} for {name!r}",
                field=f"{field}.offset",
            )
        data = chunk.data  # read once: the upb backend builds a new object on every access
        if not data and not chunk.name:
            raise InvalidArgumentError(
                f"{field}.data: empty; only a parameter's first chunk may carry no bytes",
                field=f"{field}.data",
            )
        if filled + len(data) > buffer.numel():
            raise InvalidArgumentError(
                f"{field}.data: more bytes than {name!r} holds ({buffer.numel()})",
                field=f"{field}.data",
            )
        if data:
            buffer[filled : filled + len(data)] = torch.frombuffer(data, dtype=torch.uint8)
        self._filled[name] = filled + len(data)

    def _start(self, chunk: Chunk, field: str) -> None:
        name = chunk.name
        if name in self._buffers:
            raise InvalidArgumentError(
                f"{field}.name: {name!r} is sent twice", field=f"{field}.name"
            )
        wire = _wire_type(chunk.dtype, f"{field}.dtype")
        shape = decode_shape(chunk.shape, f"{field}.shape")
        if self._expected is not None:
            if name not in self._expected:
                raise InvalidArgumentError(
                    f"{field}.name: no parameter {name!r}; the model has "
                    f"{', '.join(self._expected)}",
                    field=f"{field}.name",
                )
            dtype, expected_shape = self._expected[name]
            if wire.torch_dtype != dtype:
                raise InvalidArgumentError(
                    f"{field}.dtype: {wire.name} for {name!r}, expected {torch_dtype_name(dtype)}",
                    field=f"{field}.dtype",
                )
            if shape != expected_shape:
                raise InvalidArgumentError(
                    f"{field}.shape: {list(shape)} for {name!r}, expected {list(expected_shape)}",
                    field=f"{field}.shape",
                )
        size = math.prod(shape) * wire.itemsize
        self._buffers[name] = (torch.empty(size, dtype=torch.uint8), wire.torch_dtype, shape)
        self._filled[name] = 0
        self._current = name

    @property
    def empty(self) -> bool:
        return not self._buffers

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The complete tensors; InvalidArgumentError when any parameter is short."""
        if not self._buffers:
            raise InvalidArgumentError("chunks: the upload is empty", field="chunks")
        result = []
        for name, (buffer, dtype, shape) in self._buffers.items():
            if self._filled[name] != buffer.numel():
                raise InvalidArgumentError(
                    f"chunks: {name!r} ended at {self._filled[name]} of {buffer.numel()} bytes",
                    field="chunks",
                )
            tensor = buffer.view(dtype).reshape(shape)
            if not _LITTLE_ENDIAN_HOST and tensor.element_size() > 1:
                tensor = _swap_bytes(tensor)
            result.append((name, tensor))
        return result
