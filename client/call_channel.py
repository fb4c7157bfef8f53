"""The one object a GradientClient calls through: channel, deadlines, retries, errors, run.

`CallChannel` owns the gRPC channel and its stubs, sets the deadline on every call, retries
what is safe to retry, and turns grpc.RpcError into GradserveError (its error boundary: the
call groups never catch grpc.RpcError themselves). It is bound to one run (`run`, "" for the
default run): `metadata` carries it as `gradserve-run` so that a proxy can place the call by
run without reading the body (docs/runs.md). `for_run` makes one for another run over the
same channel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, TypedDict, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradserve.defaults import DEFAULT_MAX_MESSAGE_BYTES, SERVICE_NAME, channel_options
from gradserve.errors import UnavailableError
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

from .errors import error_from_rpc
from .handshake import tls_hint
from .retry import DEFAULT_RETRY, RetryPolicy

T = TypeVar("T")

# The request metadata that names the run (server/rpc/runs.py checks it against the body).
RUN_METADATA = "gradserve-run"

Metadata = tuple[tuple[str, str], ...]


def run_metadata(metadata: Sequence[tuple[str, str]], run: str) -> Metadata:
    """`metadata` with `gradserve-run: run` added, or unchanged for the default run.

    Not sent for the default run: every replica has its own default run (each server builds
    one from its flags), so there is nothing to place, and a call to the default run stays
    byte for byte what it was before runs existed (proxies and servers that predate runs see
    nothing new)."""
    return (*metadata, (RUN_METADATA, run)) if run else tuple(metadata)


def new_channel(
    target: str, max_message_bytes: int, credentials: grpc.ChannelCredentials | None
) -> grpc.Channel:
    """A channel to `target` with gradserve's message limits and a short reconnect backoff."""
    options: list[tuple[str, int]] = [
        *channel_options(max_message_bytes),
        # Reconnect soon after a server restart: gRPC's default backoff grows to 120 s,
        # and calls fail fast while the channel waits it out.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


class ChannelSettings(TypedDict, total=False):
    """GradientClient's keyword arguments, each CallChannel's own (defaults there)."""

    timeout: float
    retry: RetryPolicy
    max_message_bytes: int
    credentials: grpc.ChannelCredentials | None
    metadata: Sequence[tuple[str, str]]
    channel: grpc.Channel | None
    run: str


class CallChannel:
    """gRPC calls to one server for one run, each with a deadline, retries and GradserveError."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel: grpc.Channel | None = None,
        run: str = "",
        owns_channel: bool = True,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self.run = run
        # The caller's metadata (the bearer token), and with the run's name for this run.
        self.caller_metadata = tuple(metadata)
        self.metadata = run_metadata(self.caller_metadata, run)
        # Known only for a channel made here: what a failed handshake is checked against.
        self.uses_tls: bool | None = None
        if channel is None:
            channel = new_channel(target, max_message_bytes, credentials)
            self.uses_tls = credentials is not None
        self.grpc_channel = channel
        self.owns_channel = owns_channel
        self.stub = pb_grpc.GradientServiceStub(self.grpc_channel)
        self.health = health_pb2_grpc.HealthStub(self.grpc_channel)

    def for_run(self, run: str) -> CallChannel:
        """One for run `run` over this channel, with its deadline, retries and credentials;
        closing it leaves the channel open."""
        other = CallChannel(
            self.target,
            timeout=self.timeout,
            retry=self.retry,
            metadata=self.caller_metadata,
            channel=self.grpc_channel,
            run=run,
            owns_channel=False,
        )
        other.uses_tls = self.uses_tls
        return other

    def close(self) -> None:
        """Close the gRPC channel when this object made it (not one `for_run` shares)."""
        if self.owns_channel:
            self.grpc_channel.close()

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Block until the server reports SERVING; UnavailableError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: str = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                message = f"server at {self.target} not ready after {timeout:g}s ({last})"
                # gRPC reports a refused TLS handshake as a timeout: say so when it is one.
                hint = None
                if self.uses_tls is not None:
                    hint = tls_hint(self.target, client_uses_tls=self.uses_tls)
                raise UnavailableError(f"{message}; {hint}" if hint else message)
            try:
                response = self.health.Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                    timeout=min(remaining, 2.0),
                    wait_for_ready=True,
                    metadata=self.metadata,
                )
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.RpcError as error:
                last = f"{error.code().name}: {error.details()}"
                if error.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise error_from_rpc(error) from None
            # Polling a health endpoint: the interval bounds how fast readiness is seen.
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def call(
        self,
        method: Callable[..., T],
        request: Any,
        *,
        run: str | None = None,
        retry: bool = True,
    ) -> T:
        """One RPC with the deadline, retried on UNAVAILABLE under the retry policy. `run`:
        the run the request names when it is not this client's (CreateRun, DeleteRun), so
        that the metadata names the same run as the body.

        Retried only when the request is safe to repeat: reads, or writes carrying a
        request_id (the same id on every attempt). `retry=False` for writes without one."""
        metadata = self.metadata if run is None else run_metadata(self.caller_metadata, run)
        max_attempts = self.retry.max_attempts if retry else 1
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=metadata)
            except grpc.RpcError as error:
                attempt += 1
                if error.code() is not grpc.StatusCode.UNAVAILABLE or attempt >= max_attempts:
                    raise error_from_rpc(error) from None
            time.sleep(self.retry.backoff(attempt))

    def call_stream(self, method: Callable[..., T], messages: Callable[[], Iterator[Any]]) -> T:
        """A client-streaming RPC under `call`'s deadline and retries: `messages()` makes the
        request stream anew for every attempt (an iterator the failed attempt used up cannot
        be sent again)."""
        return self.call(lambda _, **options: method(messages(), **options), None)

    def responses(
        self, method: Callable[..., Any], request: Any, *, timeout: float | None = None
    ) -> Generator[Any, None, None]:
        """A server-streaming (or bidirectional) RPC's answers, once, without retries: its
        deadline `timeout` (default the client's) bounds the whole stream. The call is
        cancelled when the caller stops reading early, so the server stops too."""
        call = method(request, timeout=timeout or self.timeout, metadata=self.metadata)
        try:
            yield from call
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        finally:
            call.cancel()
