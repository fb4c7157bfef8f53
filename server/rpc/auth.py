"""Who may call the server: TLS/mTLS credentials, and bearer tokens checked in constant time.

Tokens come from a file (one per line, `#` comments) and/or GRADSERVE_AUTH_TOKENS. A call must
carry `authorization: Bearer <token>` metadata; each configured token is compared with
hmac.compare_digest over sha256 digests (equal lengths, no early exit across tokens). Health
checks and reflection pass without a token unless configured otherwise. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from gradserve.errors import InvalidArgumentError, UnauthenticatedError

from ..config import SecurityConfig
from ..metrics import ServerMetrics, method_label
from ..runs.principals import TokenEntry, read_token_entries
from .interceptors import status_for

logger = logging.getLogger(__name__)

# Services an orchestrator's probe or grpcurl may reach without a token (when allowed).
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
DENIED_MESSAGE = "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"


def load_tokens(config: SecurityConfig) -> tuple[TokenEntry, ...]:
    """The configured tokens with their principals (server/runs/principals.py has the format)."""
    return tuple(read_token_entries(config.auth_tokens, config.auth_tokens_file))


def read_tls_file(path: str, what: str) -> bytes:
    """A TLS file's bytes, or one line naming the flag that points at a file it cannot read."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise InvalidArgumentError(f"{what}: cannot read {path}: {error.strerror}") from None


def server_credentials(config: SecurityConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the listening port; None for plaintext (no --tls-cert)."""
    if not config.tls_cert:
        if config.tls_key or config.tls_client_ca:
            raise InvalidArgumentError("tls: --tls-key and --tls-client-ca need --tls-cert")
        return None
    if not config.tls_key:
        raise InvalidArgumentError("tls: --tls-cert needs --tls-key")
    chain = read_tls_file(config.tls_cert, "tls_cert")
    key = read_tls_file(config.tls_key, "tls_key")
    client_ca = (
        read_tls_file(config.tls_client_ca, "tls_client_ca") if config.tls_client_ca else None
    )
    check_key_pair(config.tls_cert, config.tls_key)
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def check_key_pair(cert: str, key: str) -> None:
    """gRPC accepts a key that does not match the certificate and fails later, inside the
    server, with a traceback; OpenSSL (through the ssl module) says so here, in one line."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise InvalidArgumentError(
            f"tls: --tls-key {key} does not match --tls-cert {cert} or is not a PEM key "
            f"({error.reason or error})",
            field="tls_key",
        ) from None


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


class BearerTokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through only with a configured bearer token (or to an open service)."""

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        allow_unauthenticated_health: bool = True,
        metrics: ServerMetrics | None = None,
    ) -> None:
        if not tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._digests = tuple(_digest(token) for token in tokens)
        self._open = OPEN_SERVICES if allow_unauthenticated_health else frozenset()
        self._metrics = metrics

    def authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
        scheme, _, token = presented.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        candidate = _digest(token.strip())
        matched = False
        for digest in self._digests:
            # No short-circuit: every configured token is compared on every call.
            matched |= hmac.compare_digest(candidate, digest)
        return matched

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        service = details.method.lstrip("/").rpartition("/")[0]
        if service in self._open or self.authorized(details.invocation_metadata):
            return continuation(details)
        logger.debug("denied an unauthenticated call to %s", details.method)
        if self._metrics is not None:
            self._metrics.rejected.labels(
                method_label(details.method), grpc.StatusCode.UNAUTHENTICATED.name
            ).inc()
        return _denying(continuation(details))


def _deny(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort_with_status(status_for(UnauthenticatedError(DENIED_MESSAGE)))


def _deny_stream(request: Any, context: grpc.ServicerContext) -> Any:
    context.abort_with_status(status_for(UnauthenticatedError(DENIED_MESSAGE)))
    yield  # pragma: no cover - a generator, so streaming responses get a status


def _denying(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED without decoding
    the request (no deserializer: the bytes are never parsed)."""
    if handler is None or handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_deny)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_deny_stream)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_deny)
    return grpc.stream_stream_rpc_method_handler(_deny_stream)
