"""A real gRPC proxy on 127.0.0.1 that forwards raw bytes to a server and can lose answers.

It stands for the network between a client and a gradserve server: every call is forwarded
unchanged (request bytes, metadata, deadline, status and status details), except the unary
calls the fault plan picks. For those the proxy answers the client with a status of its own
(UNAVAILABLE by default), either after forwarding the request (the server applied it, the
answer was lost: what a retry with a request_id must survive) or instead of forwarding it.
Streaming calls always pass; which calls stream comes from the protobuf descriptor pool
(gradserve.v1 is registered here; unknown methods are treated as unary).

    with FaultyProxy(server.address, drop_calls={1}) as proxy:
        client = GradientClient(proxy.address)

Calls are counted per method; `drop_calls` are 1-based positions in that count. A fraction
of calls can be dropped instead, drawn from a seeded RNG, so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent import futures
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import descriptor_pool

# Registers gradserve.v1 in the default descriptor pool: how the proxy knows which calls stream.
from gradserve.v1 import gradserve_pb2  # noqa: F401

# The methods that change a server's state: the ones whose lost answers matter.
WRITE_METHODS = frozenset({"ComputeGradients", "ApplyUpdate", "SetParameters"})
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Dropped:
    """One call the proxy answered with its own status."""

    method: str
    call: int  # 1-based, per method
    forwarded: bool  # True: the server got (and ran) the request


class FaultyProxy:
    def __init__(
        self,
        target: str,
        *,
        methods: Collection[str] = WRITE_METHODS,
        drop_calls: Collection[int] = (),
        drop_fraction: float = 0.0,
        seed: int = 0,
        forward_dropped: bool = True,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        rewrite_stream_requests: Callable[[str, bytes], bytes] | None = None,
    ) -> None:
        """methods: short method names the faults apply to (others always pass).
        drop_calls: 1-based call numbers, per method, whose answer is replaced by `code`.
        drop_fraction: probability that any other matching call is dropped (seeded RNG).
        forward_dropped: True forwards a dropped call before failing it (the server ran it);
        False fails it without the server seeing it.
        rewrite_stream_requests(method, bytes): what a streaming call's request becomes on its
        way to the server (an older server's view of a message, say)."""
        if not 0.0 <= drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction {drop_fraction} not in [0, 1]")
        self.methods = frozenset(methods)
        self.drop_calls = frozenset(drop_calls)
        self.drop_fraction = drop_fraction
        self.forward_dropped = forward_dropped
        self.code = code
        self.rewrite_stream_requests = rewrite_stream_requests
        self.calls: Counter[str] = Counter()  # every call seen, by short method name
        self.dropped: list[Dropped] = []
        # (short method name, the call's metadata) of every call, in arrival order.
        self.metadata_seen: list[tuple[str, dict[str, Any]]] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channel = grpc.insecure_channel(target, options=options)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="proxy"),
            handlers=[_Handler(self)],
            options=options,
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.stop(0).wait()
        self._channel.close()

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _should_drop(self, method: str) -> tuple[bool, int]:
        with self._lock:
            self.calls[method] += 1
            number = self.calls[method]
            if method not in self.methods:
                return False, number
            # Drawn for every matching call so the sequence depends only on the seed and order.
            draw = self._random.random()
            return number in self.drop_calls or draw < self.drop_fraction, number

    def _forward(self, path: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        call = self._channel.unary_unary(path)  # no (de)serializers: bytes pass through
        response: bytes = call(request, **_call_options(context))
        return response

    def _stream(
        self, path: str, request: Any, context: grpc.ServicerContext, kind: str
    ) -> Iterator[bytes]:
        """Streaming calls pass through untouched (counted, never dropped)."""
        with self._lock:
            self.calls[path.rpartition("/")[2]] += 1
        multicallable = getattr(self._channel, kind)(path)
        rewrite, method = self.rewrite_stream_requests, path.rpartition("/")[2]
        if rewrite is not None and kind in ("stream_unary", "stream_stream"):
            request = (rewrite(method, message) for message in request)
        try:
            if kind == "stream_unary":
                future = multicallable.future(request, **_call_options(context))
                context.add_callback(future.cancel)  # the client went away: so does this call
                yield future.result()
                return
            call = multicallable(request, **_call_options(context))
            context.add_callback(call.cancel)
            yield from call
        except grpc.RpcError as error:
            _pass_error_on(error, context)

    def _unary(self, path: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        method = path.rpartition("/")[2]
        drop, number = self._should_drop(method)
        if not drop:
            try:
                return self._forward(path, request, context)
            except grpc.RpcError as error:
                _pass_error_on(error, context)
        if self.forward_dropped:
            # The client gets the proxy's status whatever the server answered.
            with contextlib.suppress(grpc.RpcError):
                self._forward(path, request, context)
        with self._lock:
            self.dropped.append(Dropped(method, number, self.forward_dropped))
        context.abort(self.code, f"proxy dropped the answer to {method} call {number}")
        raise AssertionError("unreachable: abort raises")


def _call_options(context: grpc.ServicerContext) -> dict[str, Any]:
    """The client's deadline and metadata, for the call to the server."""
    metadata = [
        (key, value)
        for key, value in context.invocation_metadata()
        if not key.startswith(":") and key not in ("user-agent", "grpc-timeout")
    ]
    return {"timeout": context.time_remaining(), "metadata": metadata}


def _pass_error_on(error: grpc.RpcError, context: grpc.ServicerContext) -> None:
    # The server's status, details (google.rpc.Status with the field violations) included.
    context.set_trailing_metadata(error.trailing_metadata() or ())
    context.abort(error.code(), error.details() or "")


def _streaming(path: str) -> tuple[bool, bool]:
    """(client streams, server streams) of a method known to the default descriptor pool."""
    service, _, method = path.lstrip("/").rpartition("/")
    try:
        found = descriptor_pool.Default().FindServiceByName(service).methods_by_name[method]
    except KeyError:
        return False, False
    return found.client_streaming, found.server_streaming


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: FaultyProxy) -> None:
        self._proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        path = handler_call_details.method
        proxy = self._proxy
        metadata = dict(handler_call_details.invocation_metadata or ())
        proxy.metadata_seen.append((path.rpartition("/")[2], metadata))
        client_streams, server_streams = _streaming(path)
        if not client_streams and not server_streams:
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: proxy._unary(path, request, context)
            )
        if client_streams and server_streams:
            return grpc.stream_stream_rpc_method_handler(
                lambda requests, context: proxy._stream(path, requests, context, "stream_stream")
            )
        if server_streams:
            return grpc.unary_stream_rpc_method_handler(
                lambda request, context: proxy._stream(path, request, context, "unary_stream")
            )

        def stream_unary(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            return next(proxy._stream(path, requests, context, "stream_unary"))

        return grpc.stream_unary_rpc_method_handler(stream_unary)
