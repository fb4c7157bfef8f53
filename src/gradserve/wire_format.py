"""Protobuf wire format written and read by hand for the messages that carry whole parameters:
GetParametersResponse, and the chunks of StreamParameters and UploadParameters.

Why: protobuf's Python API copies a `bytes` field on every set, serialise, parse and read, and
a 134 MB response went through four such copies. Written here, a tensor's bytes pass through
one `b"".join`; read here, a chunk's `data` is a memoryview into the received message.

What is written is exactly what protobuf itself serialises for the same message (fields in
number order, proto3 defaults left out, `shape` packed): tests/test_wire_format.py compares
them byte for byte, and every other client parses it with its own generated code. What is
read is what protobuf would accept: fields in any order, the last of a repeated singular field
winning, `shape` packed or not, unknown fields skipped. Malformed input never raises from the
parser: it returns its findings (`Problem`: the field at fault and why), for the caller to
raise as InvalidArgumentError where it knows the message's place (chunks[3].shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Wire types (protobuf encoding spec).
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10
# A shape longer than this is refused while it is read (codec.MAX_RANK is 16): a packed field
# of millions of varints costs no memory.
MAX_SHAPE_ENTRIES = 64


def varint(value: int) -> bytes:
    """A varint; negative values as their 64-bit two's complement (10 bytes), as int64 is."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_prefix(number: int, length: int) -> bytes:
    """The key and length of a length-delimited field whose payload follows."""
    return key(number, LENGTH) + varint(length)


def string_field(number: int, text: str) -> bytes:
    """A proto3 string: left out when empty."""
    if not text:
        return b""
    raw = text.encode()
    return length_prefix(number, len(raw)) + raw


def int_field(number: int, value: int, *, present: bool = False) -> bytes:
    """A proto3 int64/enum: left out when 0 unless `present` (an `optional` field that is set)."""
    if value == 0 and not present:
        return b""
    return key(number, VARINT) + varint(value)


def packed_field(number: int, values: Sequence[int]) -> bytes:
    """A packed repeated int64: left out when empty."""
    if not values:
        return b""
    body = b"".join(varint(value) for value in values)
    return length_prefix(number, len(body)) + body


@dataclass(frozen=True)
class Problem:
    """Why a message does not parse: `field` is the message's field ("shape"), or "request"
    for bytes that are not protobuf at all."""

    field: str
    reason: str


class WireError(Exception):
    """Internal to the parsers: turned into a Problem before it leaves them."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.problem = Problem(field, reason)


def read_varint(view: memoryview, pos: int, end: int, field: str) -> tuple[int, int]:
    """(value, position after it); WireError past `end` or over 10 bytes."""
    result = 0
    shift = 0
    for index in range(_MAX_VARINT_BYTES):
        if pos + index >= end:
            raise WireError(field, "truncated varint")
        byte = view[pos + index]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >> 64:
                raise WireError(field, "varint over 64 bits")
            return result, pos + index + 1
        shift += 7
    raise WireError(field, f"varint longer than {_MAX_VARINT_BYTES} bytes")


def signed(value: int) -> int:
    """A varint's value as int64."""
    return value - (1 << 64) if value >> 63 else value


@dataclass
class Field:
    number: int
    wire_type: int
    value: int  # a VARINT's value; for LENGTH the payload's start
    end: int  # for LENGTH the payload's end


def fields(view: memoryview, pos: int, end: int, names: dict[int, str]) -> list[Field]:
    """Every field of the message in view[pos:end], in wire order, fixed-width and unknown
    wire types checked and skipped. `names` names known fields in errors."""
    found: list[Field] = []
    while pos < end:
        tag, pos = read_varint(view, pos, end, "request")
        number, wire_type = tag >> 3, tag & 7
        field = names.get(number, f"field {number}")
        if number == 0:
            raise WireError("request", "field number 0")
        if wire_type == VARINT:
            value, pos = read_varint(view, pos, end, field)
            found.append(Field(number, wire_type, value, pos))
        elif wire_type == LENGTH:
            length, pos = read_varint(view, pos, end, field)
            if length > end - pos:
                raise WireError(field, f"length {length} runs past the message's end")
            found.append(Field(number, wire_type, pos, pos + length))
            pos += length
        elif wire_type in (FIXED64, FIXED32):
            pos += 8 if wire_type == FIXED64 else 4
            if pos > end:
                raise WireError(field, "truncated fixed-width value")
        else:
            raise WireError(field, f"wire type {wire_type} (groups are not used)")
    return found


def text(view: memoryview, found: Field, field: str) -> str:
    try:
        return str(view[found.value : found.end], "utf-8")
    except UnicodeDecodeError:
        raise WireError(field, "not valid UTF-8") from None


def shape_entries(view: memoryview, found: Field, shape: list[int], field: str) -> None:
    """Append one shape entry (unpacked) or all of a packed run to `shape`, bounded."""
    if found.wire_type == VARINT:
        shape.append(signed(found.value))
    else:
        pos = found.value
        while pos < found.end:
            value, pos = read_varint(view, pos, found.end, field)
            shape.append(signed(value))
            if len(shape) > MAX_SHAPE_ENTRIES:
                break
    if len(shape) > MAX_SHAPE_ENTRIES:
        raise WireError(field, f"more than {MAX_SHAPE_ENTRIES} dimensions")
