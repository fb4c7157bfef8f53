"""The `--replicas` and `--nginx` flags (server/flags.py adds them to the server's parser)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

ENV_REPLICAS = "GRADSERVE_REPLICAS"
ENV_NGINX = "GRADSERVE_NGINX"
# Each replica is a whole server process (torch, its runs); past this many on one host a
# second host is the answer, not a longer list of processes.
MAX_REPLICAS = 64


def replica_count(text: str) -> int:
    """argparse type: an integer from 1 to MAX_REPLICAS (argparse names the flag, exits 2)."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= count <= MAX_REPLICAS:
        raise argparse.ArgumentTypeError(f"{count} is not between 1 and {MAX_REPLICAS}")
    return count


def add_replica_flags(
    add: Callable[..., object], env_or: Callable[[str, object], str], default: dict[str, object]
) -> None:
    add(
        "--replicas",
        type=replica_count,
        default=env_or(ENV_REPLICAS, default["replicas"]),
        help="start N server processes on loopback ports and nginx in front on --host/--port, "
        f"each run placed on one of them by name (docs/scaling.md) [{ENV_REPLICAS}]",
    )
    add(
        "--nginx",
        default=env_or(ENV_NGINX, default["nginx"]),
        help=f"the nginx binary --replicas starts [{ENV_NGINX}]",
    )
