"""Capacity for long-lived streams apart from short calls, and an end to idle streams.

gRPC's thread-pool server runs each RPC on one handler thread for the RPC's whole life, so a
stream that sits idle (a Train stream between requests, an upload that never finishes) holds
its thread. Left alone, as many idle streams as handler threads starve every unary call and
health check. Two rules keep short calls served (docs/availability.md says why this design):

- The pool has `workers` threads for short calls plus `max_streams` for streams, and at most
  `max_streams` streaming RPCs run at once; one more is refused at once with
  RESOURCE_EXHAUSTED (field `max_streams`) instead of taking a thread from short calls.
- A stream that waits on its client for `idle_seconds` (no request arrives, or a response is
  not taken) is cancelled, which frees its thread; the client sees CANCELLED. Time the server
  spends working on a request does not count. A watchdog thread checks once a second.

The interceptor wraps only streaming handlers; unary calls pass through untouched.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from gradserve.errors import ResourceExhaustedError


class StreamAdmission(grpc.ServerInterceptor):  # type: ignore[misc]
    """Admits at most `max_streams` streaming RPCs and cancels those idle for `idle_seconds`
    (0: never). `on_refused` / `on_idle` are called for metrics."""

    def __init__(
        self,
        max_streams: int,
        idle_seconds: float,
        *,
        on_refused: Callable[[], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        check_interval: float = 1.0,
    ) -> None:
        self.max_streams = max_streams
        self.idle_seconds = idle_seconds
        self._on_refused = on_refused or (lambda: None)
        self._on_idle = on_idle or (lambda: None)
        self._lock = threading.Lock()
        # Active streams: context -> monotonic time of its last message.
        self._active: dict[Any, float] = {}
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._check_interval = check_interval
        # Watchdog rounds done so far, for whoever must know that time has been checked.
        self._checked = threading.Condition(self._lock)
        self.checks = 0

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._active)

    def wait_for_checks(self, count: int, timeout: float) -> bool:
        """Block until the watchdog has finished `count` rounds in all."""
        with self._checked:
            return self._checked.wait_for(lambda: self.checks >= count, timeout)

    def start(self) -> None:
        if self.idle_seconds > 0 and self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch, name="gradserve-stream-watchdog", daemon=True
            )
            self._watchdog.start()

    def close(self) -> None:
        self._stopping.set()
        if self._watchdog is not None:
            self._watchdog.join()
            self._watchdog = None

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or not (handler.request_streaming or handler.response_streaming):
            return handler
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._stream_stream(handler.stream_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_unary(handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.unary_stream_rpc_method_handler(
            self._unary_stream(handler.unary_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )

    # -- admission and progress ------------------------------------------------------------

    def _admit(self, context: Any) -> None:
        with self._lock:
            if len(self._active) >= self.max_streams:
                self._on_refused()
                raise ResourceExhaustedError(
                    f"max_streams: {self.max_streams} streams are open on this server; "
                    "retry later or use the unary calls",
                    field="max_streams",
                    retry_delay=1.0,  # streams close: unlike the other limits, this one passes
                )
            self._active[context] = time.monotonic()

    def _leave(self, context: Any) -> None:
        with self._lock:
            self._active.pop(context, None)

    def _touch(self, context: Any, busy: bool = False) -> None:
        """The stream moved a message: its idle clock restarts, or stops while the server
        itself is working on what it received (`busy`). A plain dict store under the GIL:
        cheaper than the lock on every message, and a stream already gone stays gone."""
        if context in self._active:
            self._active[context] = math.inf if busy else time.monotonic()

    def _requests(self, requests: Iterator[Any], context: Any, *, busy: bool) -> Iterator[Any]:
        """`busy`: the server works on each request before it wants the next one (Train);
        otherwise it waits for the client until the last one (uploads), then works."""
        for request in requests:
            self._touch(context, busy=busy)
            yield request
        self._touch(context, busy=True)

    def _responses(self, responses: Iterator[Any], context: Any) -> Iterator[Any]:
        for response in responses:
            yield response
            self._touch(context)

    def _watch(self) -> None:
        while not self._stopping.wait(self._check_interval):
            deadline = time.monotonic() - self.idle_seconds
            with self._lock:
                idle = [context for context, last in self._active.items() if last < deadline]
                for context in idle:
                    del self._active[context]
                self.checks += 1
                self._checked.notify_all()
            for context in idle:
                self._on_idle()
                context.cancel()

    # -- wrapped behaviours ------------------------------------------------------------

    def _stream_stream(self, behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
        def run(requests: Iterator[Any], context: Any) -> Iterator[Any]:
            self._admit(context)
            try:
                requests = self._requests(requests, context, busy=True)
                yield from self._responses(behaviour(requests, context), context)
            finally:
                self._leave(context)

        return run

    def _stream_unary(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def run(requests: Iterator[Any], context: Any) -> Any:
            self._admit(context)
            try:
                return behaviour(self._requests(requests, context, busy=False), context)
            finally:
                self._leave(context)

        return run

    def _unary_stream(self, behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
        def run(request: Any, context: Any) -> Iterator[Any]:
            self._admit(context)
            try:
                yield from self._responses(behaviour(request, context), context)
            finally:
                self._leave(context)

        return run
