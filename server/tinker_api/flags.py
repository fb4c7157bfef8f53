"""The Tinker API's flags and environment variables (server/flags.py calls add_tinker_flags)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ENV_TINKER_PORT = "GRADSERVE_TINKER_PORT"
ENV_TINKER_HOST = "GRADSERVE_TINKER_HOST"
ENV_TINKER_MAX_SESSIONS = "GRADSERVE_TINKER_MAX_SESSIONS"
ENV_TINKER_SESSION_SECONDS = "GRADSERVE_TINKER_SESSION_SECONDS"
ENV_TINKER_MAX_FUTURES = "GRADSERVE_TINKER_MAX_FUTURES"
ENV_TINKER_MAX_FUTURE_BYTES = "GRADSERVE_TINKER_MAX_FUTURE_BYTES"
ENV_TINKER_MAX_BODY_BYTES = "GRADSERVE_TINKER_MAX_BODY_BYTES"


def _port(text: str) -> int | None:
    return None if text in ("", "None", "none", "off") else int(text)


def add_tinker_flags(
    add: Callable[..., object], env_or: Callable[[str, object], str], default: dict[str, Any]
) -> None:
    add(
        "--tinker-port",
        type=_port,
        default=_port(str(env_or(ENV_TINKER_PORT, default["tinker_port"]))),
        help="serve the Tinker REST API (the official tinker SDK) on this port, 0 for a free "
        f"one; off unless set (docs/tinker.md) [{ENV_TINKER_PORT}]",
    )
    add(
        "--tinker-host",
        default=env_or(ENV_TINKER_HOST, default["tinker_host"]),
        help=f"address the Tinker API binds; loopback unless opened [{ENV_TINKER_HOST}]",
    )
    for flag, env, help_text, kind in (
        ("max_sessions", ENV_TINKER_MAX_SESSIONS, "Tinker sessions held at once", int),
        ("session_seconds", ENV_TINKER_SESSION_SECONDS,
         "a Tinker session without a heartbeat this long is forgotten", float),
        ("max_futures", ENV_TINKER_MAX_FUTURES,
         "Tinker futures held at once (waiting, running or not yet retrieved)", int),
        ("max_future_bytes", ENV_TINKER_MAX_FUTURE_BYTES,
         "bytes of waiting Tinker requests and kept answers", int),
        ("max_body_bytes", ENV_TINKER_MAX_BODY_BYTES,
         "the largest Tinker request body (decompressed)", int),
    ):  # fmt: skip
        add(
            f"--tinker-{flag.replace('_', '-')}",
            type=kind,
            default=kind(env_or(env, default[f"tinker_{flag}"])),
            help=f"{help_text} [{env}]",
        )
