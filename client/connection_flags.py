"""The connection flags that `gradserve-train` and `gradserve` share, defined once: the server's
address, deadlines, retries, TLS files and the token file, with their GRADSERVE_* variables;
the client they make; and the help format both use (each flag's default shown)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import ConnectionConfig
from .gradient_client import GradientClient
from .retry import RetryPolicy
from .security import bearer_metadata, channel_credentials, read_token

ENV_SERVER = "GRADSERVE_SERVER"
ENV_TIMEOUT = "GRADSERVE_TIMEOUT_SECONDS"

# ConnectionConfig's fields, each filled from the argparse destination of the same name.
CONNECTION_FIELDS = (
    "server",
    "timeout_seconds",
    "connect_timeout_seconds",
    "retry_attempts",
    "retry_max_backoff_seconds",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "token_file",
)


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default; an absent value (None) and an off switch
    say nothing, since their help says what none means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        if action.default == "":
            return f"{action.help} (default: '')"
        return super()._get_help_string(action)


def server_address(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; expected HOST:PORT")
    return text.strip()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def add_connection_flags(
    parser: argparse.ArgumentParser | Any,
    environ: Mapping[str, str],
    *,
    server_help: str,
) -> None:
    """Add the shared flags to `parser` (or an argument group); `server_help` says what no
    --server means for this command."""
    defaults = ConnectionConfig()
    add = parser.add_argument
    add(
        "--server",
        type=server_address,
        default=environ.get(ENV_SERVER) or None,
        metavar="HOST:PORT",
        help=f"the gradserve server [{ENV_SERVER}]; {server_help}",
    )
    add(
        "--timeout",
        dest="timeout_seconds",
        type=float,
        default=float(environ.get(ENV_TIMEOUT, defaults.timeout_seconds)),
        metavar="SECONDS",
        help=f"deadline of each call [{ENV_TIMEOUT}]",
    )
    add(
        "--connect-timeout",
        dest="connect_timeout_seconds",
        type=float,
        default=defaults.connect_timeout_seconds,
        metavar="SECONDS",
        help="how long to wait for the server to be ready",
    )
    add(
        "--retry-attempts",
        type=positive_int,
        default=defaults.retry_attempts,
        help="attempts per call while the server is UNAVAILABLE (restarting)",
    )
    add(
        "--retry-max-backoff",
        dest="retry_max_backoff_seconds",
        type=float,
        default=defaults.retry_max_backoff_seconds,
        metavar="SECONDS",
        help="longest wait between two attempts",
    )
    add("--tls-ca", type=Path, default=None, help="connect with TLS, trusting this CA (PEM)")
    add("--tls-cert", type=Path, default=None, help="client certificate for mTLS (PEM)")
    add("--tls-key", type=Path, default=None, help="the client certificate's key (PEM)")
    add(
        "--token-file",
        type=Path,
        default=None,
        help="send the bearer token in this file (none: GRADSERVE_TOKEN, if set)",
    )


def connection_from_args(values: Mapping[str, Any]) -> ConnectionConfig:
    return ConnectionConfig(**{name: values[name] for name in CONNECTION_FIELDS})


def open_client(connection: ConnectionConfig, target: str, run: str = "") -> GradientClient:
    """A client to `target` with the connection flags' deadline, retries, TLS and token
    (shared by `gradserve-train` and `gradserve`)."""
    return GradientClient(
        target,
        timeout=connection.timeout_seconds,
        retry=RetryPolicy(
            max_attempts=connection.retry_attempts,
            max_backoff=connection.retry_max_backoff_seconds,
        ),
        credentials=channel_credentials(connection.tls_ca, connection.tls_cert, connection.tls_key),
        metadata=bearer_metadata(read_token(connection.token_file)),
        run=run,
    )
