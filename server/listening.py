"""How the server listens: one server per port, idle connections closed, connections bounded.

gRPC turns SO_REUSEPORT on by default, so a second server on a busy port used to start, say
"listening", and have the kernel split new connections between two different models. Here it
is off, and a busy port is found first with a plain bind, so the operator reads one line
instead of gRPC's own log line and a RuntimeError. Idle connections (no call in flight) are
closed after --connection-idle-seconds (`grpc.max_connection_idle_ms`); clients pinging more
often than keepalive enforcement allows are closed too (gRPC's default policy, kept explicit).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

from gradserve.errors import GradserveError

from .config import NetworkConfig

ENV_HOST = "GRADSERVE_HOST"
ENV_PORT = "GRADSERVE_PORT"
ENV_CONNECTION_IDLE_SECONDS = "GRADSERVE_CONNECTION_IDLE_SECONDS"
ENV_MAX_CONNECTIONS = "GRADSERVE_MAX_CONNECTIONS"
# gRPC's keepalive enforcement: a client pinging without calls more often than this is sent
# GOAWAY after a few strikes (what grpc-go and grpc-java servers enforce too).
MIN_PING_INTERVAL_MS = 5 * 60 * 1000
MAX_PING_STRIKES = 2


class PortInUseError(GradserveError):
    """The address is held by another socket: another server, most likely."""


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_port_free(host: str, port: int, flag: str) -> None:
    """PortInUseError naming `flag` when `host:port` cannot be bound (port 0 always can)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As a listening server binds: TIME_WAIT leftovers do not count, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"{flag} {port}: {format_address(host, port)} is already in use "
                    "(another server on this port?)",
                    field=flag.lstrip("-").replace("-", "_"),
                ) from None
            raise PortInUseError(
                f"{flag} {port}: cannot bind {format_address(host, port)}: {error.strerror}",
                field=flag.lstrip("-").replace("-", "_"),
            ) from None


def server_options(network: NetworkConfig) -> list[tuple[str, Any]]:
    """gRPC server options for ports and connections."""
    options: list[tuple[str, Any]] = [
        ("grpc.so_reuseport", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
    ]
    if network.connection_idle_seconds > 0:
        idle_ms = max(1, round(network.connection_idle_seconds * 1000))
        options.append(("grpc.max_connection_idle_ms", idle_ms))
    if network.max_connections > 0:
        options.append(("grpc.max_allowed_incoming_connections", network.max_connections))
    return options


def add_listening_flags(
    add: Callable[..., object], env_or: Callable[[str, object], str], default: dict[str, object]
) -> None:
    """The address and the connection flags (server/flags.py calls this)."""
    add("--host", default=env_or(ENV_HOST, default["host"]), help=f"address to bind [{ENV_HOST}]")
    add(
        "--port",
        type=int,
        default=int(env_or(ENV_PORT, default["port"])),
        help=f"port to bind, 0 for a free one [{ENV_PORT}]",
    )
    add(
        "--connection-idle-seconds",
        type=float,
        default=float(env_or(ENV_CONNECTION_IDLE_SECONDS, default["connection_idle_seconds"])),
        help="close a client connection with no call in flight for this long, 0 for never "
        f"[{ENV_CONNECTION_IDLE_SECONDS}]",
    )
    add(
        "--max-connections",
        type=int,
        default=int(env_or(ENV_MAX_CONNECTIONS, default["max_connections"])),
        help=f"client connections open at once, 0 for no limit [{ENV_MAX_CONNECTIONS}]",
    )
