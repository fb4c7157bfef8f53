"""A store's state in and out: checkpoints (export, restore at start, load at run time, fork
into a new run), the state digest of the live model, and the parameters as the large
transfers read them (GetParameters encoded from the live tensors, StreamParameters' snapshot).

Owned by ParameterStore (parameter_store.py), which delegates these calls to it; it reads
and writes the store's LiveState (live_state.py). Every method takes the store's lock; checks
run before anything is copied.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from gradserve.huge_pages import empty_bytes
from gradserve.run_types import LoadResult

from .buffers import check_buffer_state
from .compute import ComputeStrategy
from .live_state import LiveState
from .parameter_access import check_names, check_state
from .request_ids import RequestIdWindow, check_request_id
from .state_digest import state_digest
from .store_state import StoreState

T = TypeVar("T")


class StateTransfer:
    """Checkpoints, digests and large reads of one store's LiveState, under its lock.
    `compute` is the store's strategy: a restored checkpoint must reach its ranks too."""

    def __init__(self, state: LiveState, compute: ComputeStrategy) -> None:
        self._state = state
        self._compute = compute

    def encode_parameters(
        self,
        names: Sequence[str],
        encode: Callable[[list[tuple[str, torch.Tensor]], int], T],
        *,
        max_bytes: int | None = None,
        include_buffers: bool = False,
    ) -> T:
        """encode(tensors, version) called once, under the lock, on the live tensors (no copy
        before it): GetParameters writes its response straight from them. Names and, with
        `max_bytes`, the encoded size are checked first, as read_parameters checks them."""
        selected = self._selected(names, max_bytes, include_buffers)
        with self._state.lock:
            return encode(
                [(n, self._state.tensors[n].detach().cpu()) for n in selected], self._state.version
            )

    def snapshot_parameters(
        self, names: Sequence[str], *, include_buffers: bool = False
    ) -> tuple[int, list[tuple[str, torch.Tensor]]]:
        """(version, copies) of the named tensors, copied under the lock into one fresh buffer
        (gradserve.huge_pages: 10 ms for 134 MB where torch.empty pages cost 50 ms). The
        caller (StreamParameters) holds it while it sends, so every chunk of a stream is of
        one version; it is at most the model's size (names are checked and unique) and freed
        with the last chunk."""
        selected = self._selected(names, None, include_buffers)
        sizes = [
            self._state.tensors[n].numel() * self._state.tensors[n].element_size() for n in selected
        ]
        # Each copy starts on a 64-byte boundary: aligned for every dtype (pytorch#190043).
        starts, end = [], 0
        for size in sizes:
            starts.append(end)
            end += -(-size // 64) * 64
        buffer = empty_bytes(end)
        copies = [
            (name, buffer[start : start + size].view(tensor.dtype).reshape(tensor.shape))
            for name, start, size in zip(selected, starts, sizes, strict=True)
            for tensor in (self._state.tensors[name],)
        ]
        with self._state.lock, torch.no_grad():
            for (name, piece), size in zip(copies, sizes, strict=True):
                if size:
                    piece.copy_(self._state.tensors[name].detach())
            return self._state.version, copies

    def _selected(
        self, names: Sequence[str], max_bytes: int | None, include_buffers: bool
    ) -> list[str]:
        default = self._state.tensors if include_buffers else self._state.named
        return check_names(self._state.tensors, names, max_bytes, default=list(default))

    def export_state(self) -> StoreState:
        """A consistent copy of everything a checkpoint holds, taken under the lock."""
        with self._state.lock:
            return self.state_copy()

    def state_copy(self) -> StoreState:
        """export_state's copy; call with the lock held (a checkpoint at a cadence version
        in the middle of a Train request, parameter_store.py)."""
        return StoreState(
            version=self._state.version,
            accumulated_batches=self._state.accumulated_batches,
            accumulated_samples=self._state.accumulated_samples,
            parameters={n: p.detach().clone() for n, p in self._state.named.items()},
            gradients={
                n: p.grad.detach().clone()
                for n, p in self._state.named.items()
                if p.grad is not None
            },
            # deepcopy: torch.optim hands out its live state tensors, stepped in place later.
            optimizer=copy.deepcopy(self._state.optimizer.state_dict()),
            buffers={n: b.detach().clone() for n, b in self._state.buffers.items()},
            request_ids=tuple(
                (method, request_id, entry.result, entry.fingerprint)
                for method, request_id, entry in self._state.request_ids.items()
            ),
        )

    def restore_state(self, state: StoreState) -> None:
        """Put a checkpoint's state back: parameters, .grad, buffers (when it has them),
        optimizer, version, counts, ids."""
        self._compute.check_restore(state)
        check_state(self._state.named, state)
        check_buffer_state(self._state.buffers, state.buffers)
        with self._state.lock, torch.no_grad():
            for name, parameter in self._state.named.items():
                parameter.copy_(state.parameters[name])
                gradient = state.gradients.get(name)
                parameter.grad = None if gradient is None else gradient.clone()
            for name, value in state.buffers.items():
                self._state.buffers[name].copy_(value)
            self._state.optimizer.load_state_dict(copy.deepcopy(state.optimizer))
            self._state.version = state.version
            self._state.accumulated_batches = state.accumulated_batches
            self._state.accumulated_samples = state.accumulated_samples
            window = self._state.request_ids
            self._state.request_ids = RequestIdWindow(window.capacity, window.max_bytes)
            for method, request_id, result, digest in state.request_ids:
                self._state.request_ids.put(method, request_id, result, digest)
        self._compute.restored()

    def state_digest(self) -> tuple[str, int]:
        """(digest, version) of the live state, hashed in place under the lock: one
        consistent view and no copy of the model (server/store/state_digest.py)."""
        with self._state.lock:
            return self._live_digest(), self._state.version

    def _live_digest(self) -> str:
        return state_digest(
            self._state.named, self._state.buffers, self._state.optimizer.state_dict()
        )

    def load_checkpoint(
        self,
        read: Callable[[], StoreState],
        *,
        with_optimizer_state: bool,
        request_id: str = "",
        payload: tuple[object, ...] = (),
    ) -> LoadResult:
        """LoadCheckpoint: `read()`'s parameters and buffers (and optimizer state when
        asked) into the live model; the version goes up by one, accumulated gradients are
        dropped, the request-id windows stay. A repeated request_id (with the same `payload`)
        is answered again without reading or loading anything."""
        check_request_id(request_id)

        def run() -> LoadResult:
            state = read()
            check_state(self._state.named, state)
            check_buffer_state(self._state.buffers, state.buffers)
            discarded = self._state.accumulated_batches
            self._copy_state(state, with_optimizer_state=with_optimizer_state)
            self._state.version += 1
            return LoadResult(
                model_version=self._state.version,
                checkpoint_version=state.version,
                restored_parameters=len(state.parameters),
                restored_buffers=len(state.buffers),
                restored_optimizer_state=with_optimizer_state,
                discarded_batches=discarded,
                digest=self._live_digest(),
            )

        with self._state.lock:
            return self._state.request_ids.remembered(
                "load_checkpoint", request_id, run, *payload, with_optimizer_state
            )

    def fork_state(self, state: StoreState, *, with_optimizer_state: bool) -> str:
        """CreateRun's fork: a checkpoint's parameters and buffers (and optimizer state when
        asked) into this new run, at the checkpoint's version, nothing accumulated. Answers
        the digest, equal to the checkpoint's when the optimizer state came with it."""
        check_state(self._state.named, state)
        check_buffer_state(self._state.buffers, state.buffers)
        with self._state.lock:
            self._copy_state(state, with_optimizer_state=with_optimizer_state)
            self._state.version = state.version
            return self._live_digest()

    def _copy_state(self, state: StoreState, *, with_optimizer_state: bool) -> None:
        """Parameters, buffers and (when asked) optimizer state in; gradients out. Call with
        the lock held, after the checks."""
        with torch.no_grad():
            for name, parameter in self._state.named.items():
                parameter.copy_(state.parameters[name])
                parameter.grad = None
            for name, value in state.buffers.items():
                self._state.buffers[name].copy_(value)
        if with_optimizer_state:
            self._state.optimizer.load_state_dict(copy.deepcopy(state.optimizer))
        self._state.accumulated_batches = 0
        self._state.accumulated_samples = 0
