"""StreamAdmission on a real gRPC server: streams past the cap are refused at once, idle streams
are cancelled, busy ones are not, and unary calls pass straight through."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from gradserve.errors import GradserveError
from gradserve.server.rpc.interceptors import status_for
from gradserve.server.rpc.stream_admission import StreamAdmission

SERVICE = "test.Echo"


class ErrorMap(grpc.ServerInterceptor):  # type: ignore[misc]
    """The project's errors as statuses (what server/rpc/interceptors.py does for the real server)."""

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or not handler.request_streaming:
            return handler

        def run(requests: Any, context: Any) -> Iterator[bytes]:
            try:
                yield from handler.stream_stream(requests, context)
            except GradserveError as error:
                context.abort_with_status(status_for(error))

        return grpc.stream_stream_rpc_method_handler(run)


def echo_stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    yield from requests


def echo_unary(request: bytes, context: Any) -> bytes:
    return request


working = threading.Event()
release = threading.Event()


def slow_stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    """Answers each request once the test releases it: the server is busy meanwhile."""
    for request in requests:
        working.set()
        release.wait(30)
        yield request


@pytest.fixture
def served() -> Iterator[tuple[grpc.Channel, StreamAdmission]]:
    admission = StreamAdmission(max_streams=2, idle_seconds=0.3, check_interval=0.05)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), interceptors=[ErrorMap(), admission]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Stream": grpc.stream_stream_rpc_method_handler(echo_stream),
                    "Unary": grpc.unary_unary_rpc_method_handler(echo_unary),
                    "Slow": grpc.stream_stream_rpc_method_handler(slow_stream),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    admission.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, admission
    finally:
        channel.close()
        admission.close()
        server.stop(None)


class OpenStream:
    """A client stream whose requests the test sends one at a time."""

    def __init__(self, channel: grpc.Channel, method: str = "Stream") -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self.responses = channel.stream_stream(f"/{SERVICE}/{method}")(iter(self._queue.get, None))

    def send(self, data: bytes) -> bytes:
        self._queue.put(data)
        return next(self.responses)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._queue.put(None)


def test_streams_past_the_cap_are_refused_and_unary_still_answers(
    served: tuple[grpc.Channel, StreamAdmission],
) -> None:
    channel, admission = served
    held = [OpenStream(channel) for _ in range(2)]
    assert [stream.send(b"hi") for stream in held] == [b"hi", b"hi"]
    assert admission.active == 2
    refused = OpenStream(channel)
    with pytest.raises(grpc.RpcError) as caught:
        refused.send(b"one too many")
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_streams" in (caught.value.details() or "")
    assert channel.unary_unary(f"/{SERVICE}/Unary")(b"ping", timeout=5) == b"ping"
    for stream in held:
        stream.close()


def test_an_idle_stream_is_cancelled_and_frees_its_place(
    served: tuple[grpc.Channel, StreamAdmission],
) -> None:
    channel, admission = served
    idle = OpenStream(channel)
    assert idle.send(b"first") == b"first"
    cancelled = threading.Event()
    failure: list[grpc.RpcError] = []

    def wait_for_end() -> None:
        try:
            next(idle.responses)
        except grpc.RpcError as error:
            failure.append(error)
        cancelled.set()

    waiter = threading.Thread(target=wait_for_end)
    waiter.start()
    assert cancelled.wait(10), "the idle stream was not cancelled"
    waiter.join()
    assert failure and failure[0].code() is grpc.StatusCode.CANCELLED
    assert admission.active == 0
    # Its place is free again.
    fresh = [OpenStream(channel) for _ in range(2)]
    assert [stream.send(b"again") for stream in fresh] == [b"again", b"again"]
    for stream in fresh:
        stream.close()


def test_a_stream_the_server_is_working_on_is_not_idle(
    served: tuple[grpc.Channel, StreamAdmission],
) -> None:
    channel, admission = served
    working.clear()
    release.clear()
    stream = OpenStream(channel, "Slow")
    answer: list[bytes] = []
    done = threading.Event()

    def receive() -> None:
        answer.append(stream.send(b"long work"))
        done.set()

    receiver = threading.Thread(target=receive)
    receiver.start()
    assert working.wait(10)
    # Twenty watchdog rounds of at least 50 ms each: well past the 0.3 s idle limit.
    assert admission.wait_for_checks(admission.checks + 20, timeout=30)
    assert admission.active == 1
    release.set()
    assert done.wait(10)
    receiver.join()
    assert answer == [b"long work"]
    stream.close()
