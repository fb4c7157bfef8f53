"""Tinker's futures: a call is submitted, runs on a worker thread, in seq_id order per model, and
its answer waits, bounded in count and bytes, until the SDK retrieves it.

The SDK numbers each training client's calls (`seq_id` 1, 2, ...) and may send them out of order
(the chunks of one forward_backward go together, the first one last), so each model has a lane
that runs the next seq_id only once every earlier one has arrived, one call at a time; models run
side by side. A seq_id seen before is a retry: the same payload gets the first call's future, any
other payload is refused (never run twice). Everything held is counted before it is taken: the
futures not yet retrieved, and the bytes of the requests waiting plus the answers kept. An
answer is kept after retrieval (a lost response may be asked for again) until room is needed;
one never retrieved is dropped `ttl_seconds` after it was ready.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gradserve.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError

logger = logging.getLogger(__name__)

# seq_ids remembered per model for retries.
SEQ_WINDOW = 1024


@dataclass(frozen=True)
class Answer:
    """A finished call's response: bytes and their content type."""

    body: bytes
    content_type: str = "application/json"


Work = Callable[[], Answer]


@dataclass(eq=False)
class _Future:
    request_id: str
    owner: str
    size: int
    work: Work
    lane: _Lane | None
    done: asyncio.Event
    answer: Answer | None = None
    finished_at: float = 0.0
    retrieved: bool = False


@dataclass(eq=False)
class _Lane:
    """One model's calls: waiting ones by seq_id, the last seq_id run, and recent seq_ids."""

    waiting: list[tuple[int, int, _Future]] = field(default_factory=list)
    last_seq: int = 0
    running: bool = False
    seen: OrderedDict[int, tuple[bytes, str]] = field(default_factory=OrderedDict)


class FutureQueue:
    """Submitted calls and their answers. `submit` and `result` are called on the event loop
    `loop`; the work runs on `workers` threads."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        max_futures: int,
        max_bytes: int,
        ttl_seconds: float,
        workers: int = 4,
        on_error: Callable[[BaseException], Answer],
    ) -> None:
        self._loop = loop
        self._max_futures, self._max_bytes, self._ttl = max_futures, max_bytes, ttl_seconds
        self._on_error = on_error
        self._lock = threading.Lock()
        self._futures: OrderedDict[str, _Future] = OrderedDict()
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._held_bytes = 0
        self._order = itertools.count()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="gradserve-tinker")

    def submit(
        self,
        owner: str,
        work: Work,
        *,
        size: int,
        model: str | None = None,
        seq_id: int | None = None,
        payload: bytes = b"",
    ) -> str:
        """The new future's request id; with `model`, it runs after that model's earlier
        seq_ids. `size`: the bytes the waiting call holds (its request)."""
        fingerprint = hashlib.sha256(payload).digest()
        with self._lock:
            lane = None if model is None else self._lanes.setdefault((owner, model), _Lane())
            if lane is not None and seq_id is not None:
                again = self._retry_of(lane, seq_id, fingerprint, model or "")
                if again is not None:
                    return again
            self._make_room(size)
            future = _Future(uuid.uuid4().hex, owner, size, work, lane, asyncio.Event())
            self._futures[future.request_id] = future
            self._held_bytes += size
            if lane is None:
                self._start(future)
            else:
                seq = lane.last_seq + 1 if seq_id is None else seq_id
                lane.seen[seq] = (fingerprint, future.request_id)
                while len(lane.seen) > SEQ_WINDOW:
                    lane.seen.popitem(last=False)
                heapq.heappush(lane.waiting, (seq, next(self._order), future))
                self._pump(lane)
            return future.request_id

    def _retry_of(self, lane: _Lane, seq_id: int, fingerprint: bytes, model: str) -> str | None:
        """The earlier future of a repeated seq_id (same payload), or a refusal."""
        earlier = lane.seen.get(seq_id)
        if earlier is not None:
            if earlier[0] == fingerprint:
                return earlier[1]
            raise InvalidArgumentError(
                f"seq_id: {seq_id} was used for another request of model {model[:80]!r}",
                field="seq_id",
            )
        if seq_id <= lane.last_seq:
            raise InvalidArgumentError(
                f"seq_id: {seq_id} is not after {lane.last_seq}, the last one of model "
                f"{model[:80]!r} run (or is older than the last {SEQ_WINDOW} remembered)",
                field="seq_id",
            )
        return None

    def _make_room(self, size: int) -> None:
        """Drop what may go (expired and retrieved answers, oldest first), then refuse unless
        one more future of `size` bytes fits."""
        now = time.monotonic()
        for request_id, future in list(self._futures.items()):
            expired = future.answer is not None and now - future.finished_at > self._ttl
            if expired:
                self._drop(request_id)
        open_futures = sum(1 for f in self._futures.values() if not f.retrieved)
        for request_id, future in list(self._futures.items()):
            full = len(self._futures) >= self._max_futures
            if not (full or self._held_bytes + size > self._max_bytes):
                break
            if future.retrieved:
                self._drop(request_id)
        if open_futures >= self._max_futures:
            raise ResourceExhaustedError(
                f"tinker_max_futures: {open_futures} futures are held (waiting, running or not "
                "yet retrieved); retrieve them or wait",
                field="tinker_max_futures",
            )
        if self._held_bytes + size > self._max_bytes:
            raise ResourceExhaustedError(
                f"tinker_max_future_bytes: {size} more bytes would pass {self._max_bytes} "
                f"({self._held_bytes} held by waiting requests and kept answers)",
                field="tinker_max_future_bytes",
            )

    def _drop(self, request_id: str) -> None:
        future = self._futures.pop(request_id)
        self._held_bytes -= len(future.answer.body) if future.answer is not None else future.size

    def _pump(self, lane: _Lane) -> None:
        """Start the lane's next call if it is the next seq_id and none is running."""
        if lane.running or not lane.waiting:
            return
        seq = lane.waiting[0][0]
        if seq > lane.last_seq + 1:
            return  # an earlier seq_id has not arrived yet
        _, _, future = heapq.heappop(lane.waiting)
        lane.last_seq = seq
        lane.running = True
        self._start(future)

    def _start(self, future: _Future) -> None:
        self._executor.submit(self._run, future)

    def _run(self, future: _Future) -> None:
        try:
            answer = future.work()
        except BaseException as error:
            answer = self._on_error(error)
        with self._lock:
            future.work = _spent
            future.answer = answer
            future.finished_at = time.monotonic()
            if future.request_id in self._futures:
                self._held_bytes += len(answer.body) - future.size
            if future.lane is not None:
                future.lane.running = False
                self._pump(future.lane)
        self._loop.call_soon_threadsafe(future.done.set)

    async def result(self, request_id: str, owner: str, wait_seconds: float) -> Answer | None:
        """The answer, waiting for it up to `wait_seconds`; None if it is not ready by then.
        Another principal's future is NOT_FOUND, as an unknown one."""
        with self._lock:
            future = self._futures.get(request_id)
        if future is None or future.owner != owner:
            raise NotFoundError(
                f"request_id: no future {request_id[:80]!r} (unknown, or its answer was "
                "dropped: answers not retrieved are kept for a while)",
                field="request_id",
            )
        if future.answer is None:
            try:
                await asyncio.wait_for(future.done.wait(), wait_seconds)
            except TimeoutError:
                return None
        with self._lock:
            future.retrieved = True
        assert future.answer is not None
        return future.answer

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _spent() -> Answer:
    raise AssertionError("a future's work runs once")
