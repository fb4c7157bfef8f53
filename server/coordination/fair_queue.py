"""The queue of one base's cross-run batches: per-principal FIFOs taken round-robin, bounded.

A principal that sends more requests (over more runs) than another does not push the other's
requests back: each batch takes one request per principal in turn, starting with the
principal after the last one a batch served, so a queued request is in the next batch that
has room for one request per waiting principal. Bounded in requests and bytes, checked
before a request is queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Queued(Protocol):
    @property
    def principal(self) -> str: ...

    @property
    def tokens(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def arrived(self) -> float: ...


Q = TypeVar("Q", bound=Queued)


class FairQueue(Generic[Q]):
    def __init__(self) -> None:
        self._by_principal: dict[str, deque[Q]] = {}
        # Principals with queued requests, in the order the next batch visits them.
        self._rotation: deque[str] = deque()
        self.requests = 0
        self.tokens = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return self.requests

    def push(self, entry: Q) -> int:
        """Queue it; answer its position (requests ahead of it in the fair order)."""
        queued = self._by_principal.get(entry.principal)
        if queued is None:
            queued = self._by_principal[entry.principal] = deque()
            self._rotation.append(entry.principal)
        queued.append(entry)
        self.requests += 1
        self.tokens += entry.tokens
        self.nbytes += entry.nbytes
        return next(i for i, queued in enumerate(self._fair_order()) if queued is entry)

    def first(self) -> Q | None:
        """The request that has waited longest (the window runs from its arrival)."""
        heads = [queued[0] for queued in self._by_principal.values()]
        return min(heads, key=lambda entry: entry.arrived, default=None)

    def take(self, max_requests: int, max_tokens: int) -> list[Q]:
        """The next batch: one request per principal in turn, while it fits the bounds (the
        first request always: one larger than the bound runs as a batch of its own)."""
        taken: list[Q] = []
        tokens = 0
        while self._rotation and len(taken) < max_requests:
            principal = self._rotation[0]
            queued = self._by_principal[principal]
            if taken and tokens + queued[0].tokens > max_tokens:
                break
            entry = queued.popleft()
            taken.append(entry)
            tokens += entry.tokens
            self.requests -= 1
            self.tokens -= entry.tokens
            self.nbytes -= entry.nbytes
            self._rotation.popleft()
            if queued:
                self._rotation.append(principal)  # its next request waits for the others'
            else:
                del self._by_principal[principal]
        return taken

    def _fair_order(self) -> Iterator[Q]:
        """Every queued request in the order take() would hand them out, bounds aside."""
        depth = 0
        while True:
            found = False
            for principal in self._rotation:
                queued = self._by_principal[principal]
                if depth < len(queued):
                    found = True
                    yield queued[depth]
            if not found:
                return
            depth += 1
