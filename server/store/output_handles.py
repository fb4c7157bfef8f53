"""The forward passes ComputeOutputs keeps for BackwardOutputs: one run's handles and bounds.

A handle names the outputs of one training-mode forward pass with their autograd graph (the
dropout masks and batch statistics it used), so BackwardOutputs backpropagates through exactly
the pass whose outputs the client saw. Each run holds at most `count` handles and `bytes` of
kept tensors (what the graph saved for backward, plus the outputs); a handle expires `seconds`
after it was made, goes stale when the run's version changes (an update, SetParameters, a
load), and is used up by the BackwardOutputs that accumulates it. A full table refuses the
next ComputeOutputs (RESOURCE_EXHAUSTED) rather than dropping a handle a client still holds.
Called with the store's lock held; the clock is a parameter so tests need no sleeps.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from gradserve.errors import FailedPreconditionError, ResourceExhaustedError

from ..config import LimitsConfig

ENV_OUTPUT_HANDLES = "GRADSERVE_OUTPUT_HANDLES"
ENV_OUTPUT_HANDLE_BYTES = "GRADSERVE_OUTPUT_HANDLE_BYTES"
ENV_OUTPUT_HANDLE_SECONDS = "GRADSERVE_OUTPUT_HANDLE_SECONDS"


@dataclass(frozen=True)
class HandleBounds:
    """Per run: handles held at once, bytes they keep, seconds each lives."""

    count: int = LimitsConfig.output_handles
    bytes: int = LimitsConfig.output_handle_bytes
    seconds: float = LimitsConfig.output_handle_seconds

    @classmethod
    def of(cls, limits: LimitsConfig) -> HandleBounds:
        return cls(limits.output_handles, limits.output_handle_bytes, limits.output_handle_seconds)


def add_output_handle_flags(
    add: Callable[..., object], env_or: Callable[[str, object], str], default: dict[str, object]
) -> None:
    """The three flags of the bounds above (server/flags.py calls this)."""
    add(
        "--output-handles",
        type=int,
        default=int(env_or(ENV_OUTPUT_HANDLES, default["output_handles"])),
        help=f"ComputeOutputs handles one run holds at once [{ENV_OUTPUT_HANDLES}]",
    )
    add(
        "--output-handle-bytes",
        type=int,
        default=int(env_or(ENV_OUTPUT_HANDLE_BYTES, default["output_handle_bytes"])),
        help=f"bytes one run's handles keep for backward [{ENV_OUTPUT_HANDLE_BYTES}]",
    )
    add(
        "--output-handle-seconds",
        type=float,
        default=float(env_or(ENV_OUTPUT_HANDLE_SECONDS, default["output_handle_seconds"])),
        help=f"seconds a ComputeOutputs handle lives [{ENV_OUTPUT_HANDLE_SECONDS}]",
    )


@dataclass
class Kept:
    outputs: torch.Tensor
    version: int
    batch_size: int
    expires_at: float
    size: int


@contextmanager
def saved_bytes(excluded: Iterable[torch.Tensor]) -> Iterator[list[int]]:
    """Count the bytes autograd saves for backward inside the block (parameters excepted:
    they are kept anyway). The total is in the yielded list's one element."""
    skip = {tensor.data_ptr() for tensor in excluded}
    total = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.data_ptr() not in skip:
            total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield total


class OutputHandles:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._kept: OrderedDict[str, Kept] = OrderedDict()
        # When the longest-lived handle expires (0: none held): one float, read without the
        # store's lock by the idle unloader (in_use), so an unload never drops a live handle.
        self._live_until = 0.0

    def in_use(self) -> bool:
        """True while a handle may still be live (conservative: a stale one counts until its
        expiry)."""
        return self._clock() < self._live_until

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def held_bytes(self) -> int:
        return sum(kept.size for kept in self._kept.values())

    def check_room(self, version: int, bounds: HandleBounds) -> None:
        """Before a forward pass: refuse when the run already holds `count` live handles."""
        self._drop_dead(version)
        if len(self._kept) >= bounds.count:
            raise ResourceExhaustedError(
                f"handle: the run holds {len(self._kept)} output handles, at most "
                f"{bounds.count} (--output-handles); send their BackwardOutputs or let them "
                f"expire ({bounds.seconds:g} s)",
                field="handle",
            )

    def keep(
        self, outputs: torch.Tensor, version: int, batch_size: int, size: int, bounds: HandleBounds
    ) -> str:
        size += outputs.numel() * outputs.element_size()
        held = self.held_bytes
        if held + size > bounds.bytes:
            raise ResourceExhaustedError(
                f"inputs: this forward pass keeps {size} bytes for backward and the run's "
                f"handles hold {held}, at most {bounds.bytes} (--output-handle-bytes)",
                field="inputs",
            )
        handle = secrets.token_hex(16)
        expires_at = self._clock() + bounds.seconds
        self._kept[handle] = Kept(outputs, version, batch_size, expires_at, size)
        self._live_until = max(self._live_until, expires_at)
        return handle

    def peek(self, handle: str, version: int) -> Kept:
        """The live forward pass a handle names; FAILED_PRECONDITION naming `handle` if none."""
        kept = self._kept.get(handle)
        if kept is not None and kept.version != version:
            self.release(handle)
            raise FailedPreconditionError(
                f"handle: its outputs were computed at version {kept.version}, but the run is "
                f"at version {version} now (an update or a parameter change came between); "
                "call ComputeOutputs again",
                field="handle",
                reason="HANDLE_STALE",
            )
        if kept is not None and self._clock() >= kept.expires_at:
            self.release(handle)
            kept = None
        if kept is None:
            raise FailedPreconditionError(
                "handle: unknown, expired or already used (each handle backpropagates once); "
                "call ComputeOutputs again",
                field="handle",
                reason="HANDLE_NOT_FOUND",
            )
        return kept

    def expires_in(self, kept: Kept) -> float:
        return max(0.0, kept.expires_at - self._clock())

    def release(self, handle: str) -> None:
        self._kept.pop(handle, None)
        if not self._kept:
            self._live_until = 0.0

    def _drop_dead(self, version: int) -> None:
        now = self._clock()
        for handle in [
            h for h, k in self._kept.items() if k.version != version or now >= k.expires_at
        ]:
            del self._kept[handle]
        if not self._kept:
            self._live_until = 0.0
