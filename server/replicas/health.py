"""The set's grpc.health.v1: SERVING only while every replica answers SERVING.

nginx sends `/grpc.health.v1.Health/*` here (server/replicas/nginx.py). Each Check asks every
replica in turn, with the caller's metadata (a bearer token, when health needs one) and a short
deadline, so a probe through the proxy says whether the whole set can serve, not one replica.
Watch is not offered (UNIMPLEMENTED); orchestrators' probes use Check.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# A replica that takes longer than this to answer a health check is not serving.
REPLICA_CHECK_SECONDS = 2.0
# Errors of the caller's own making, passed on as they are rather than as NOT_SERVING.
_CALLER_ERRORS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                  grpc.StatusCode.NOT_FOUND)  # fmt: skip
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ReplicaSetHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, replicas: Sequence[str]) -> None:
        self._channels = [grpc.insecure_channel(address) for address in replicas]
        self._stubs = [health_pb2_grpc.HealthStub(channel) for channel in self._channels]
        self._stopping = threading.Event()

    def stopping(self) -> None:
        """NOT_SERVING from now on: the set is shutting down."""
        self._stopping.set()

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        metadata = [(key, value) for key, value in context.invocation_metadata()
                    if key == "authorization"]  # fmt: skip
        for stub in self._stubs:
            if self._stopping.is_set():
                break
            remaining = context.time_remaining()
            timeout = (
                REPLICA_CHECK_SECONDS
                if remaining is None
                else min(remaining, REPLICA_CHECK_SECONDS)
            )
            try:
                answer = stub.Check(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as error:
                if error.code() in _CALLER_ERRORS:
                    context.abort(error.code(), error.details() or "")
                break
            if answer.status != SERVING:
                break
        else:
            return health_pb2.HealthCheckResponse(status=SERVING)
        return health_pb2.HealthCheckResponse(status=NOT_SERVING)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def start_set_server(
    health: ReplicaSetHealth, extra: Sequence[grpc.GenericRpcHandler] = ()
) -> tuple[grpc.Server, str]:
    """The supervisor's own gRPC server (the set's health, the `extra` handlers) on a free
    loopback port, for nginx alone; (server, HOST:PORT)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="set"),
                         handlers=list(extra), options=[("grpc.so_reuseport", 0)])  # fmt: skip
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"
