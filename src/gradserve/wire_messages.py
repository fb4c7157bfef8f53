"""GetParametersResponse and the parameter chunks (StreamParametersResponse,
UploadParametersRequest) as wire bytes: written from tensors, read into views.

Built on wire_format.py (the primitives and the rules it keeps). Field numbers are those of
proto/gradserve/v1/gradserve.proto; tests/test_wire_format.py checks every writer against the
generated messages byte for byte, and every reader against them field for field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gradserve.codec import wire_bytes
from gradserve.errors import InvalidArgumentError
from gradserve.wire_format import (
    LENGTH,
    VARINT,
    Field,
    Problem,
    WireError,
    fields,
    int_field,
    length_prefix,
    packed_field,
    shape_entries,
    signed,
    string_field,
    text,
)

# Tensor and the chunks: name 1, dtype 2, shape 3; Tensor.data 4; chunks' offset 4, data 5,
# model_version 6, expected_version 7, request_id 8, run 9 (UploadParametersRequest only).
_TENSOR_NAMES = {1: "name", 2: "dtype", 3: "shape", 4: "data"}
_CHUNK_NAMES = {
    1: "name", 2: "dtype", 3: "shape", 4: "offset", 5: "data",
    6: "model_version", 7: "expected_version", 8: "request_id", 9: "run",
}  # fmt: skip
_RESPONSE_NAMES = {1: "parameters", 2: "model_version"}


def get_parameters_response(tensors: Sequence[tuple[str, torch.Tensor]], version: int) -> bytes:
    """GetParametersResponse{parameters, model_version} serialised, each tensor's bytes copied
    once (by the join) straight from the tensor."""
    pieces: list[bytes | memoryview] = []
    for name, tensor in tensors:
        wire, raw = wire_bytes(tensor)
        data = raw.numpy().data  # a memoryview of the tensor itself
        header = (
            string_field(1, name)
            + int_field(2, int(wire.proto))
            + packed_field(3, tuple(tensor.shape))
            + (length_prefix(4, len(data)) if data else b"")
        )
        pieces += [length_prefix(1, len(header) + len(data)), header, data]
    pieces.append(int_field(2, version))
    return b"".join(pieces)


def chunk_message(
    data: memoryview | bytes,
    *,
    offset: int,
    model_version: int = 0,
    first: tuple[str, int, Sequence[int]] | None = None,
    expected_version: int | None = None,
    request_id: str = "",
    run: str = "",
) -> bytes:
    """One chunk serialised: `first` is (name, dtype, shape) on a parameter's first chunk."""
    name, dtype, shape = first if first is not None else ("", 0, ())
    return b"".join(
        (
            string_field(1, name),
            int_field(2, dtype),
            packed_field(3, shape),
            int_field(4, offset),
            length_prefix(5, len(data)) if len(data) else b"",
            data,
            int_field(6, model_version),
            b"" if expected_version is None else int_field(7, expected_version, present=True),
            string_field(8, request_id),
            string_field(9, run),
        )
    )


@dataclass
class ChunkView:
    """A parsed chunk: the generated messages' fields, `data` a view into the received bytes.
    `problem` is set when the bytes did not parse (the other fields are then meaningless)."""

    name: str = ""
    dtype: int = 0
    shape: list[int] = field(default_factory=list)
    offset: int = 0
    data: memoryview | bytes = b""
    model_version: int = 0
    expected_version: int | None = None
    request_id: str = ""
    run: str = ""
    problem: Problem | None = None

    def checked(self, where: str) -> ChunkView:
        """This chunk, or InvalidArgumentError naming `where`.field when it did not parse."""
        if self.problem is not None:
            name = f"{where}.{self.problem.field}"
            raise InvalidArgumentError(f"{name}: {self.problem.reason}", field=name)
        return self


def parse_chunk(message: bytes) -> ChunkView:
    """A chunk (StreamParametersResponse, UploadParametersRequest or the old ParameterChunk:
    the same field numbers) from its bytes; never raises."""
    view = memoryview(message)
    chunk = ChunkView()
    try:
        for found in fields(view, 0, len(view), _CHUNK_NAMES):
            _chunk_field(view, found, chunk)
    except WireError as error:
        return ChunkView(problem=error.problem)
    return chunk


def _enum(value: int) -> int:
    """An enum is an int32: protobuf keeps a varint's low 32 bits, signed."""
    low = value & 0xFFFFFFFF
    return low - (1 << 32) if low >> 31 else low


def _chunk_field(view: memoryview, found: Field, chunk: ChunkView) -> None:
    number, kind = found.number, found.wire_type
    if number == 3 and kind in (VARINT, LENGTH):
        shape_entries(view, found, chunk.shape, "shape")
    elif kind == VARINT and number in (2, 4, 6, 7):
        value = signed(found.value)
        if number == 2:
            chunk.dtype = _enum(value)
        elif number == 4:
            chunk.offset = value
        elif number == 6:
            chunk.model_version = value
        else:
            chunk.expected_version = value
    elif kind == LENGTH and number == 5:
        chunk.data = view[found.value : found.end]
    elif kind == LENGTH and number in (1, 8, 9):
        value_text = text(view, found, _CHUNK_NAMES[number])
        if number == 1:
            chunk.name = value_text
        elif number == 8:
            chunk.request_id = value_text
        else:
            chunk.run = value_text
    # Anything else (unknown numbers, known numbers with another wire type) is skipped, as
    # protobuf keeps it as an unknown field.


@dataclass
class TensorView:
    """One Tensor of a parsed GetParametersResponse, `data` a view into the response."""

    name: str = ""
    dtype: int = 0
    shape: list[int] = field(default_factory=list)
    data: memoryview | bytes = b""


def parse_get_parameters_response(message: bytes) -> tuple[int, list[TensorView]]:
    """(model_version, tensors) from a GetParametersResponse's bytes; InvalidArgumentError
    naming the field (parameters[2].shape) when they do not parse."""
    view = memoryview(message)
    version = 0
    tensors: list[TensorView] = []
    where = "response"
    try:
        for found in fields(view, 0, len(view), _RESPONSE_NAMES):
            if found.number == 2 and found.wire_type == VARINT:
                version = signed(found.value)
            elif found.number == 1 and found.wire_type == LENGTH:
                where = f"parameters[{len(tensors)}]"
                tensors.append(_tensor(view, found))
                where = "response"
    except WireError as error:
        inner = error.problem.field
        name = f"{where}.{inner}" if where != "response" else inner.replace("request", where)
        raise InvalidArgumentError(f"{name}: {error.problem.reason}", field=name) from None
    return version, tensors


def _tensor(view: memoryview, outer: Field) -> TensorView:
    tensor = TensorView()
    for found in fields(view, outer.value, outer.end, _TENSOR_NAMES):
        number, kind = found.number, found.wire_type
        if number == 3 and kind in (VARINT, LENGTH):
            shape_entries(view, found, tensor.shape, "shape")
        elif number == 2 and kind == VARINT:
            tensor.dtype = _enum(found.value)
        elif number == 4 and kind == LENGTH:
            tensor.data = view[found.value : found.end]
        elif number == 1 and kind == LENGTH:
            tensor.name = text(view, found, "name")
    return tensor
