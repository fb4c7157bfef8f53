"""The client's side of TLS, mTLS and bearer tokens: channel credentials and call metadata.

The token comes from a file (--token-file, first non-empty line) or GRADSERVE_TOKEN; it travels
as `authorization: Bearer <token>` on every call and is never printed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import grpc

ENV_TOKEN = "GRADSERVE_TOKEN"  # noqa: S105 - the variable's name, not a token


def channel_credentials(
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials trusting `tls_ca` (None: the system roots when a client cert is given),
    presenting `tls_cert`/`tls_key` for mTLS; None when nothing is given (plaintext)."""
    if tls_ca is None and tls_cert is None and tls_key is None:
        return None
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls: a client certificate needs its key and the key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca).read_bytes() if tls_ca else None,
        private_key=Path(tls_key).read_bytes() if tls_key else None,
        certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
    )


def read_token(
    token_file: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The bearer token: the first line of `token_file` that is not blank or a comment, else
    $GRADSERVE_TOKEN, else None."""
    if token_file is not None:
        for line in Path(token_file).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                return line.strip()
        raise ValueError(f"token file {token_file} holds no token")
    env = os.environ if environ is None else environ
    return env.get(ENV_TOKEN) or None


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The `authorization: Bearer TOKEN` call metadata, empty without a token."""
    return (("authorization", f"Bearer {token}"),) if token else ()
