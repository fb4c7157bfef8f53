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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from gradserve.errors import InvalidArgumentError, ResourceExhaustedError
from gradserve.huge_pages import empty_bytes
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
    """One wire dtype: its DataType, the torch dtype, its size in bytes and its name."""

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
    """The torch dtype of a wire DataType; INVALID_ARGUMENT naming `field` if unknown."""
    return _wire_type(value, field).torch_dtype


def dtype_name(value: int) -> str:
    """A DataType's name for messages ("FLOAT32"), also for values this version lacks."""
    wire = _BY_PROTO.get(value)
    return wire.name if wire else f"DataType({value})"


def torch_dtype_name(dtype: torch.dtype) -> str:
    """The wire name of a torch dtype ("FLOAT32"), for messages."""
    wire = _BY_TORCH.get(dtype)
    return wire.name if wire else str(dtype)


def wire_type(value: int, field: str) -> WireType:
    """The WireType of a DataType value; InvalidArgumentError naming `field` when unknown."""
    return _wire_type(value, field)


def wire_type_of(dtype: torch.dtype) -> WireType:
    """The WireType of a torch dtype; TypeError for dtypes the wire has no name for."""
    wire = _BY_TORCH.get(dtype)
    if wire is None:
        raise TypeError(f"{dtype} has no gradserve.v1 DataType")
    return wire


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
    if tensor.dtype in _NUMPY_WRITES and _plain_cpu(tensor):
        # A small batch's common case in two torch calls, not seven: each costs a few µs when
        # gRPC's work between calls has evicted the caches (bench/README.md, issue 18).
        wire, data = _BY_TORCH[tensor.dtype], tensor.numpy().tobytes()
    else:
        wire, raw = wire_bytes(tensor)
        data = raw.numpy().tobytes()
    message.name = name
    message.dtype = wire.proto
    message.shape[:] = tensor.shape
    message.data = data
    return message


# Dtypes whose numpy bytes are already the wire's on a little-endian host (numpy has no bf16).
_NUMPY_WRITES = (
    frozenset(w.torch_dtype for w in WIRE_TYPES if w.torch_dtype is not torch.bfloat16)
    if _LITTLE_ENDIAN_HOST
    else frozenset()
)


def _plain_cpu(tensor: torch.Tensor) -> bool:
    """A contiguous CPU tensor that .numpy() reads as it is (no autograd, no lazy negation)."""
    return (
        tensor.is_cpu
        and not tensor.requires_grad
        and tensor.is_contiguous()
        and not tensor.is_neg()
    )


def wire_bytes(tensor: torch.Tensor) -> tuple[WireType, torch.Tensor]:
    """The tensor's wire type and its bytes in wire order, as a flat uint8 tensor: a view of the
    tensor itself when it is a contiguous CPU tensor on a little-endian host (no copy)."""
    wire = wire_type_of(tensor.dtype)
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if not _LITTLE_ENDIAN_HOST and wire.itemsize > 1:
        flat = _swap_bytes(flat)
    # A uint8 view reads every dtype, bfloat16 included, which numpy itself cannot hold.
    return wire, flat.view(torch.uint8)


def tensor_from_proto(
    message: pb.Tensor, field: str = "tensor", max_elements: int | None = None
) -> torch.Tensor:
    """Decode a gradserve.v1.Tensor, checking every field; errors name `field`.

    The result is a read-only view of the message's bytes: copy it before writing to it.
    """
    # .data read once: the upb backend builds a new object on every access.
    return tensor_from_parts(message.dtype, message.shape, message.data, field, max_elements)


def tensor_from_parts(
    dtype: int,
    dims: Iterable[int],
    data: bytes | memoryview,
    field: str = "tensor",
    max_elements: int | None = None,
    *,
    copy: bool = False,
) -> torch.Tensor:
    """A tensor from its wire fields, checked as tensor_from_proto checks them. Without `copy`
    a read-only view of `data`; with it a writable tensor of its own (gradserve.huge_pages)."""
    wire = _wire_type(dtype, f"{field}.dtype")
    shape = decode_shape(dims, f"{field}.shape")
    numel = math.prod(shape)
    if max_elements is not None and numel > max_elements:
        raise ResourceExhaustedError(
            f"{field}.shape: {numel} elements is over the server's limit of {max_elements}",
            field=f"{field}.shape",
        )
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
    if not copy and wire.torch_dtype is not torch.bool and _LITTLE_ENDIAN_HOST:
        # The common case in fewer torch calls (each costs µs once gRPC's work has evicted the
        # caches, bench/README.md): typed at once, and not reshaped when already flat.
        typed = torch.frombuffer(data, dtype=wire.torch_dtype)
        if typed.data_ptr() % wire.itemsize == 0:
            return typed if len(shape) == 1 else typed.reshape(shape)
    raw = torch.frombuffer(data, dtype=torch.uint8)
    if wire.torch_dtype is torch.bool and bool((raw > 1).any()):
        raise InvalidArgumentError(
            f"{field}.data: BOOL elements must be the bytes 0x00 or 0x01", field=f"{field}.data"
        )
    # A view must be aligned for its dtype: torch's typed loads fault on a misaligned pointer
    # (pytorch#190043), and a message's bytes sit at whatever offset the fields before left.
    if copy or raw.data_ptr() % wire.itemsize:
        owned = empty_bytes(expected)
        # One memcpy on this thread (torch's copy_ would wake its intra-op threads).
        owned.numpy().data[:] = memoryview(data).cast("B")
        raw = owned
    tensor = raw.view(wire.torch_dtype).reshape(shape)
    if not _LITTLE_ENDIAN_HOST and wire.itemsize > 1:
        tensor = _swap_bytes(tensor.clone())
    return tensor


def decode_shape(dims: Iterable[int], field: str) -> tuple[int, ...]:
    """A wire shape as a tuple, its rank and sizes checked before anything is allocated;
    INVALID_ARGUMENT naming `field` otherwise."""
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
    """Named tensors as wire Tensors, in the order given."""
    return [tensor_to_proto(tensor, name) for name, tensor in named]


def spec_to_proto(name: str, dtype: torch.dtype, shape: Sequence[int]) -> pb.TensorSpec:
    """A TensorSpec message: a name, a dtype and a shape."""
    return pb.TensorSpec(name=name, dtype=dtype_to_proto(dtype), shape=shape)


def from_wire_order(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor assembled from wire bytes, in this host's byte order (itself on little-endian
    hosts)."""
    if not _LITTLE_ENDIAN_HOST and tensor.element_size() > 1:
        return _swap_bytes(tensor)
    return tensor


def _swap_bytes(tensor: torch.Tensor) -> torch.Tensor:
    # Only reached on big-endian hosts: reverse each element's bytes.
    itemsize = tensor.element_size()
    as_bytes = tensor.contiguous().view(torch.uint8).reshape(-1, itemsize).flip(1)
    return as_bytes.contiguous().view(tensor.dtype).reshape(tensor.shape)
