"""A grpc.health.v1 probe for container health checks: exit 0 only when the server is SERVING.

    python -m gradserve.server.healthcheck [--address 127.0.0.1:50051] [--service NAME] [--timeout 2]

Exit codes: 0 SERVING, 1 any other status or an RPC error (unreachable, deadline exceeded).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# gRPC core reads GRPC_VERBOSITY once, when grpc is imported; unset, this grpc writes its INFO
# lines (a GOAWAY as a server stops, ...) to stderr, into our own output. ERROR, as gRPC
# documents its default, unless the user chose a level.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ENV_PORT = "GRADSERVE_PORT"


def check(address: str, service: str = "", timeout: float = 2.0) -> str:
    """The status name the server reports for `service` ("" is the whole server)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gradserve-healthcheck", description="Probe a gradserve server's grpc.health.v1."
    )
    default_address = f"127.0.0.1:{os.environ.get(ENV_PORT) or 50051}"
    parser.add_argument("--address", default=default_address,
                        help=f"HOST:PORT of the server (default: 127.0.0.1:${ENV_PORT} or 50051)")  # fmt: skip
    parser.add_argument("--service", default="", help="service name; empty: the whole server")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds before giving up")
    args = parser.parse_args(argv)
    try:
        status = check(args.address, args.service, args.timeout)
    except grpc.RpcError as error:
        print(f"{args.address}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
