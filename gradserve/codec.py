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
    wire = _BY_TORCH.get(tensor.dtype)
    if wire is None:
        raise TypeError(f"{tensor.dtype} has no gradserve.v1 DataType")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if not _LITTLE_ENDIAN_HOST and wire.itemsize > 1:
        flat = _swap_bytes(flat)
    # A uint8 view reads every dtype, bfloat16 included, which numpy itself cannot hold.
    data = flat.view(torch.uint8).numpy().tobytes()
    return pb.Tensor(name=name, dtype=wire.proto, shape=tensor.shape, data=data)


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


def tensor_to_chunks(
    name: str, tensor: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES, model_version: int = 0
) -> Iterator[pb.ParameterChunk]:
    """A tensor as ParameterChunks of at most chunk_bytes each (at least one chunk)."""
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
        chunk = pb.ParameterChunk(offset=offset, data=piece, model_version=model_version)
        if offset == 0:
            chunk.name = name
            chunk.dtype = wire.proto
            chunk.shape.extend(tensor.shape)
        yield chunk
        offset += len(piece)
        if offset >= total:
            return


class ChunkAssembler:
    """Collects ParameterChunks back into tensors, checking each against `expected`
    (name -> (dtype, shape)) as it arrives, so a bad upload fails early and cannot grow
    past the model's own size."""

    def __init__(self, expected: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> None:
        self._expected = expected
        self._buffers: dict[str, bytearray] = {}
        self._sizes: dict[str, int] = {}
        self._current: str | None = None
        self._chunks = 0

    def add(self, chunk: pb.ParameterChunk) -> None:
        field = f"chunks[{self._chunks}]"
        self._chunks += 1
        if chunk.name:
            self._start(chunk, field)
        if self._current is None:
            raise InvalidArgumentError(
                f"{field}.name: the first chunk must name its parameter", field=f"{field}.name"
            )
        buffer = self._buffers[self._current]
        if chunk.offset != len(buffer):
            raise InvalidArgumentError(
                f"{field}.offset: {chunk.offset}, expected {len(buffer)} for {self._current!r}",
                field=f"{field}.offset",
            )
        data = chunk.data
        if len(buffer) + len(data) > self._sizes[self._current]:
            raise InvalidArgumentError(
                f"{field}.data: more bytes than {self._current!r} holds "
                f"({self._sizes[self._current]})",
                field=f"{field}.data",
            )
        buffer += data

    def _start(self, chunk: pb.ParameterChunk, field: str) -> None:
        name = chunk.name
        if name not in self._expected:
            raise InvalidArgumentError(
                f"{field}.name: no parameter {name!r}; the model has {', '.join(self._expected)}",
                field=f"{field}.name",
            )
        if name in self._buffers:
            raise InvalidArgumentError(
                f"{field}.name: {name!r} is sent twice", field=f"{field}.name"
            )
        dtype, shape = self._expected[name]
        wire = _wire_type(chunk.dtype, f"{field}.dtype")
        if wire.torch_dtype != dtype:
            raise InvalidArgumentError(
                f"{field}.dtype: {wire.name} for {name!r}, expected {torch_dtype_name(dtype)}",
                field=f"{field}.dtype",
            )
        if tuple(chunk.shape) != shape:
            raise InvalidArgumentError(
                f"{field}.shape: {list(chunk.shape)} for {name!r}, expected {list(shape)}",
                field=f"{field}.shape",
            )
        self._sizes[name] = math.prod(shape) * wire.itemsize
        self._buffers[name] = bytearray()
        self._current = name

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The complete tensors; InvalidArgumentError when any parameter is short."""
        if not self._buffers:
            raise InvalidArgumentError("chunks: the upload is empty", field="chunks")
        result = []
        for name, buffer in self._buffers.items():
            if len(buffer) != self._sizes[name]:
                raise InvalidArgumentError(
                    f"chunks: {name!r} ended at {len(buffer)} of {self._sizes[name]} bytes",
                    field="chunks",
                )
            dtype, shape = self._expected[name]
            if not buffer:
                result.append((name, torch.empty(shape, dtype=dtype)))
                continue
            tensor = torch.frombuffer(buffer, dtype=dtype).reshape(shape)
            if not _LITTLE_ENDIAN_HOST and tensor.element_size() > 1:
                tensor = _swap_bytes(tensor)
            result.append((name, tensor))
        return result
