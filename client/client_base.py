"""What every GradientClient call shares: the channel, deadlines, retries, and the run.

A client is bound to one run (`run`, "" for the default run): the RPC methods put it into
every request that has a `run` field, and `_metadata` carries it as `gradserve-run` so that
a proxy can place the call by run without reading the body (docs/runs.md). `for_run` makes a
client for another run over the same channel.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradserve.defaults import DEFAULT_MAX_MESSAGE_BYTES, SERVICE_NAME, channel_options
from gradserve.errors import UnavailableError
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

from .errors import error_from_rpc
from .handshake import tls_hint
from .retry import DEFAULT_RETRY, RetryPolicy

T = TypeVar("T")
C = TypeVar("C", bound="ClientBase")

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


class ClientBase:
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
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self.run = run
        # The caller's metadata (the bearer token), and with the run's name for this run.
        self._caller_metadata = tuple(metadata)
        self._metadata = run_metadata(self._caller_metadata, run)
        # Known only for a channel made here: what a failed handshake is checked against.
        self._uses_tls: bool | None = None
        if channel is None:
            options: list[tuple[str, int]] = [
                *channel_options(max_message_bytes),
                # Reconnect soon after a server restart: gRPC's default backoff grows to 120 s,
                # and calls fail fast while the channel waits it out.
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ]
            if credentials is None:
                channel = grpc.insecure_channel(target, options=options)
            else:
                channel = grpc.secure_channel(target, credentials, options=options)
            self._uses_tls = credentials is not None
        self._channel = channel
        self._owns_channel = True
        self._stub = pb_grpc.GradientServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    def for_run(self: C, run: str) -> C:
        """A client for run `run` over this client's channel, with its deadline, retries and
        credentials. Closing it leaves the channel to this client."""
        other = copy.copy(self)
        other.run = run
        other._metadata = run_metadata(self._caller_metadata, run)
        other._owns_channel = False
        return other

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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
                if self._uses_tls is not None:
                    hint = tls_hint(self.target, client_uses_tls=self._uses_tls)
                raise UnavailableError(f"{message}; {hint}" if hint else message)
            try:
                response = self._health.Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                    timeout=min(remaining, 2.0),
                    wait_for_ready=True,
                    metadata=self._metadata,
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

    # -- internals -----------------------------------------------------------------------

    def _call(
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
        metadata = self._metadata if run is None else run_metadata(self._caller_metadata, run)
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

    def _call_stream(self, method: Callable[..., T], messages: Callable[[], Iterator[Any]]) -> T:
        """A client-streaming RPC under _call's deadline and retries: `messages()` makes the
        request stream anew for every attempt (an iterator the failed attempt used up cannot
        be sent again)."""
        return self._call(lambda _, **options: method(messages(), **options), None)
