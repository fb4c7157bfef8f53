"""The windows of recent request ids: a repeated id gets the first call's result back (AIP-155).

One window per method, so cheap calls cannot push an update's id out. Each window is bounded in
count and in the bytes of the results it keeps (returned gradients, Train losses): past the byte
budget the oldest results are dropped but their ids stay, so a replay of one is refused with
FAILED_PRECONDITION instead of running twice. Each entry keeps a fingerprint of its request's
payload: the same id with another payload is INVALID_ARGUMENT naming `request_id`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from gradserve.errors import FailedPreconditionError, InvalidArgumentError
from gradserve.types import FINGERPRINT_OMITTED_AT_DEFAULT, FINGERPRINT_STANDS_IN_FOR

MAX_REQUEST_ID_BYTES = 128
DEFAULT_WINDOW = 1024
DEFAULT_WINDOW_BYTES = 64 * 1024 * 1024
# What one remembered float of a Train result costs in memory (a float object and its slot).
_FLOAT_BYTES = 32

R = TypeVar("R")
# Dtypes numpy reads directly (it has no bfloat16).
_NUMPY_READS = frozenset((torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8))


def check_request_id(request_id: str) -> None:
    if len(request_id.encode()) > MAX_REQUEST_ID_BYTES:
        raise InvalidArgumentError(
            f"request_id: {len(request_id.encode())} bytes, at most {MAX_REQUEST_ID_BYTES}",
            field="request_id",
        )


def fingerprint(*parts: object) -> str:
    """A 128-bit digest of a request's decoded fields: tensors by dtype, shape and bytes.

    Checkpoints keep these digests, so the bytes fed for each part never change
    (tests/test_request_ids.py pins some); the tables below only make them faster to build."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        _feed(digest, part)
    return digest.hexdigest()


# Types whose part is its repr (checked first: dataclasses.is_dataclass alone cost more than
# hashing a seed batch). Enum members' reprs and tensors' dtype-and-shape headers are made once;
# each table is cleared when it grows past _MAX_CACHED (a client choosing new shapes cannot grow
# it without bound).
_PLAIN = frozenset((bool, int, float, str, bytes, type(None), dict))
_MAX_CACHED = 1024
_HEADERS: dict[tuple[torch.dtype, torch.Size], bytes] = {}
_REPRS: dict[enum.Enum, bytes] = {}
_FIELDS: dict[type, tuple[bytes, tuple[tuple[str, object, str], ...]]] = {}
_KEPT = object()  # a field fed whatever its value


def _fields_of(kind: type) -> tuple[bytes, tuple[tuple[str, object, str], ...]]:
    """The dataclass's header and, per field: its name, the default at which it is left out
    (_KEPT: never), and the field whose items its non-None items stand in for ('' if none)."""
    fields = _FIELDS.get(kind)
    if fields is None:
        if len(_FIELDS) >= _MAX_CACHED:
            _FIELDS.clear()
        described = tuple(
            (
                item.name,
                item.default if item.metadata.get(FINGERPRINT_OMITTED_AT_DEFAULT) else _KEPT,
                str(item.metadata.get(FINGERPRINT_STANDS_IN_FOR, "")),
            )
            for item in dataclasses.fields(kind)
        )
        fields = _FIELDS[kind] = (f"{kind.__name__}{{".encode(), described)
    return fields


def _cached(table: dict[Any, bytes], key: Any, make: Callable[[], str]) -> bytes:
    value = table.get(key)
    if value is None:
        if len(table) >= _MAX_CACHED:
            table.clear()
        value = table[key] = make().encode()
    return value


def _feed(digest: Any, part: object) -> None:
    kind = type(part)
    if kind in _PLAIN:
        digest.update(f"{part!r};".encode())
    elif isinstance(part, torch.Tensor):
        digest.update(_cached(_HEADERS, (part.dtype, part.shape),
                              lambda: f"T{part.dtype}{part.shape}:"))  # fmt: skip
        if part.is_cpu and part.dtype in _NUMPY_READS and part.is_contiguous():
            # The common case, without a copy.
            digest.update((part.detach() if part.requires_grad else part).numpy())
        else:
            flat = part.detach().to("cpu").contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy())
    elif isinstance(part, list | tuple):
        digest.update(f"({len(part)}:".encode())
        for item in part:
            _feed(digest, item)
    elif isinstance(part, enum.Enum):
        digest.update(_cached(_REPRS, part, lambda: f"{part!r};"))
    elif dataclasses.is_dataclass(part) and not isinstance(part, type):
        header, fields = _fields_of(kind)
        digest.update(header)
        standing_in = {
            target: getattr(part, name)
            for name, _, target in fields
            if target and getattr(part, name)
        }
        for name, omitted_at, target in fields:
            if target:
                continue  # fed in place of its target's items, below
            value = getattr(part, name)
            # A field added later, at its default, is left out: fingerprints that checkpoints
            # kept from before it existed still match.
            if omitted_at is not _KEPT and value == omitted_at:
                continue
            if name in standing_in:
                value = tuple(
                    item if stand_in is None else stand_in
                    for item, stand_in in zip(value, standing_in[name], strict=True)
                )
            _feed(digest, value)
    else:
        digest.update(f"{part!r};".encode())


# Result type -> (has `gradients`, has `steps`): a getattr that misses raises inside, which cost
# more per call than the rest of a put. Result types are the project's few, not a client's.
_PAYLOAD_FIELDS: dict[type, tuple[bool, bool]] = {}


def payload_bytes(result: object) -> int:
    """The bytes a result holds beyond its fixed fields: what the byte budget counts."""
    kind = type(result)
    has = _PAYLOAD_FIELDS.get(kind)
    if has is None:
        has = _PAYLOAD_FIELDS[kind] = (hasattr(result, "gradients"), hasattr(result, "steps"))
    total = 0
    if has[0]:
        gradients: Mapping[str, torch.Tensor] = getattr(result, "gradients", None) or {}
        total = sum(tensor.numel() * tensor.element_size() for tensor in gradients.values())
    if has[1]:
        steps: Sequence[Any] = getattr(result, "steps", None) or ()
        total += sum(_FLOAT_BYTES * len(step.losses) for step in steps)
    return total


@dataclass
class Remembered:
    # "" for entries from checkpoints that kept none: any payload then matches.
    fingerprint: str
    # None once dropped for the byte budget: the id is remembered, its answer is not.
    result: Any | None
    size: int


class RequestIdWindow:
    """Results of the last `capacity` requests with an id, per method, in `max_bytes` each.

    Not thread-safe: the parameter store (or a coordinator) calls it under its lock.
    """

    def __init__(self, capacity: int, max_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._windows: dict[str, OrderedDict[str, Remembered]] = {}
        self._held: dict[str, int] = {}

    def remembered(self, method: str, request_id: str, run: Callable[[], R], *payload: object) -> R:
        """run()'s result, remembered under the id; a repeated id with the same payload (the
        request's decoded fields, fingerprinted only when it has an id) gets the first result
        back, marked replayed, and run() is not called."""
        if not request_id or self.capacity <= 0:
            return run()
        digest = fingerprint(*payload)
        earlier = self.replay(method, request_id, digest)
        if earlier is not None:
            return earlier  # type: ignore[no-any-return]
        result = run()
        self.put(method, request_id, result, digest)
        return result

    def replay(self, method: str, request_id: str, digest: str) -> Any | None:
        """The remembered result marked replayed, None for an unknown id; raises when the id
        came with another payload or its result was dropped for the byte budget."""
        window = self._windows.get(method)
        entry = None if window is None else window.get(request_id)
        if entry is None:
            return None
        if entry.fingerprint and digest and entry.fingerprint != digest:
            raise InvalidArgumentError(
                f"request_id: {request_id!r} was already used by another {method} request "
                "with a different payload; nothing was done (use a new id for a new request)",
                field="request_id",
            )
        if entry.result is None:
            raise FailedPreconditionError(
                f"request_id: {request_id!r} already ran; its result ({entry.size} bytes) is no "
                "longer kept (--request-id-window-bytes), so it is not run again and cannot be "
                "returned",
                field="request_id",
            )
        return dataclasses.replace(entry.result, replayed=True)

    def put(self, method: str, request_id: str, result: Any | None, digest: str = "") -> None:
        if not request_id or self.capacity <= 0:
            return
        window = self._windows.get(method)
        if window is None:
            window = self._windows[method] = OrderedDict()
        self._forget(method, window.pop(request_id, None))
        size = 0 if result is None else payload_bytes(result)
        window[request_id] = Remembered(digest, result, size)
        self._held[method] = self._held.get(method, 0) + (0 if result is None else size)
        while len(window) > self.capacity:
            self._forget(method, window.popitem(last=False)[1])
        if self._held[method] > self.max_bytes:
            self._trim(method, window)

    def _forget(self, method: str, entry: Remembered | None) -> None:
        if entry is not None and entry.result is not None:
            self._held[method] -= entry.size

    def _trim(self, method: str, window: OrderedDict[str, Remembered]) -> None:
        """Drop the oldest results until the method's results fit its byte budget."""
        for entry in window.values():
            if self._held[method] <= self.max_bytes:
                return
            if entry.result is not None and entry.size > 0:
                self._held[method] -= entry.size
                entry.result = None

    def held_bytes(self, method: str) -> int:
        return self._held.get(method, 0)

    def __len__(self) -> int:
        return sum(len(window) for window in self._windows.values())

    def items(self) -> Iterator[tuple[str, str, Remembered]]:
        """(method, request_id, entry), each method's oldest first."""
        for method, window in self._windows.items():
            for request_id, entry in window.items():
                yield method, request_id, entry
