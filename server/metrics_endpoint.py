"""The /metrics HTTP endpoint: loopback by default, optionally behind TLS and a bearer token.

Training metrics carry run labels, and run names belong to their principals (docs/runs.md):
an endpoint open to anyone who reaches the port would publish them. So it binds
--metrics-host (127.0.0.1 unless the operator opens it), can serve over the gRPC port's TLS
files (--metrics-tls, with --tls-client-ca asking scrapers for a certificate too), can ask for
a bearer token from the gRPC tokens (--metrics-auth token: any of them, admin: an admin's),
and can label runs by an opaque id instead of their names (--metrics-run-labels id, in
ServerMetrics). Tokens are compared as the gRPC interceptor compares them (constant time).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from gradserve.errors import InvalidArgumentError

from .config import ServerConfig
from .listening import check_port_free
from .rpc.auth import BearerTokenInterceptor, check_key_pair, load_tokens, read_tls_file

logger = logging.getLogger(__name__)

ENV_METRICS_PORT = "GRADSERVE_METRICS_PORT"
ENV_METRICS_HOST = "GRADSERVE_METRICS_HOST"
ENV_METRICS_AUTH = "GRADSERVE_METRICS_AUTH"
ENV_METRICS_TLS = "GRADSERVE_METRICS_TLS"
ENV_METRICS_RUN_LABELS = "GRADSERVE_METRICS_RUN_LABELS"
METRICS_AUTH = ("none", "token", "admin")
RUN_LABELS = ("name", "id")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the server's own log."""


class _MetricsServer(ThreadingWSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A scraper that fails the TLS handshake or hangs up is no server error: one
        debug line, not a traceback on stderr."""
        logger.debug("metrics: a request from %s failed", client_address[0], exc_info=True)


def _requiring_token(app: WsgiApp, check: BearerTokenInterceptor) -> WsgiApp:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION", "")
        if not check.authorized([("authorization", header)]):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"missing or invalid bearer token\n"]
        return app(environ, start_response)

    return guarded


def _tls_context(config: ServerConfig) -> ssl.SSLContext:
    security = config.security
    if not security.tls_cert or not security.tls_key:
        raise InvalidArgumentError(
            "metrics_tls: --metrics-tls needs --tls-cert and --tls-key", field="metrics_tls"
        )
    # The gRPC port's checks, so a bad file is the same one line (exit 2) whichever port reads
    # it first; /metrics starts first.
    read_tls_file(security.tls_cert, "tls_cert")
    read_tls_file(security.tls_key, "tls_key")
    check_key_pair(security.tls_cert, security.tls_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(security.tls_cert, security.tls_key)
    if security.tls_client_ca:
        read_tls_file(security.tls_client_ca, "tls_client_ca")
        try:
            context.load_verify_locations(security.tls_client_ca)
        except ssl.SSLError as error:
            raise InvalidArgumentError(
                f"tls_client_ca: --tls-client-ca {security.tls_client_ca} is not a PEM "
                f"certificate ({error.reason or error})",
                field="tls_client_ca",
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class MetricsEndpoint:
    """A started endpoint; `port` is the one bound (useful with port 0)."""

    httpd: ThreadingWSGIServer
    thread: threading.Thread
    port: int

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def start_metrics_endpoint(
    config: ServerConfig, registry: CollectorRegistry, port: int | None = None
) -> MetricsEndpoint:
    """Serve `registry` on --metrics-host:--metrics-port (or `port`) in a daemon thread;
    PortInUseError (one line for the operator) when the port is taken."""
    network, security = config.network, config.security
    host, port = network.metrics_host, network.metrics_port if port is None else port
    check_port_free(host, port, "--metrics-port")
    app: WsgiApp = make_wsgi_app(registry)
    if security.metrics_auth != "none":
        tokens = [
            entry.token
            for entry in load_tokens(security)
            if security.metrics_auth == "token" or entry.principal.admin
        ]
        if not tokens:
            raise InvalidArgumentError(
                f"metrics_auth: --metrics-auth {security.metrics_auth} needs "
                + ("an admin line in --auth-tokens-file" if security.metrics_auth == "admin"
                   else "tokens (--auth-tokens-file or GRADSERVE_AUTH_TOKENS)"),
                field="metrics_auth",
            )  # fmt: skip
        app = _requiring_token(app, BearerTokenInterceptor(tokens))
    server_class = type(
        "MetricsServer",
        (_MetricsServer,),
        {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET},
    )
    httpd: ThreadingWSGIServer = make_server(
        host, port, app, server_class, handler_class=_QuietHandler
    )
    if security.metrics_tls:
        # The handshake on the handler's thread, not in the accepting loop, where one slow
        # client would hold every other scrape.
        httpd.socket = _tls_context(config).wrap_socket(
            httpd.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(target=httpd.serve_forever, name="gradserve-metrics", daemon=True)
    thread.start()
    return MetricsEndpoint(httpd, thread, int(httpd.server_address[1]))


def _true(text: str) -> bool:
    return text.lower() in ("true", "1", "yes")


def add_metrics_flags(
    add: Callable[..., object], env_or: Callable[[str, object], str], default: dict[str, object]
) -> None:
    """The endpoint's flags (server/flags.py calls this)."""
    add(
        "--metrics-port",
        type=int,
        default=int(env_or(ENV_METRICS_PORT, default["metrics_port"])),
        help=f"Prometheus /metrics port, 0 for none [{ENV_METRICS_PORT}]",
    )
    add(
        "--metrics-host",
        default=env_or(ENV_METRICS_HOST, default["metrics_host"]),
        help=f"address /metrics binds; loopback unless opened [{ENV_METRICS_HOST}]",
    )
    add(
        "--metrics-auth",
        choices=METRICS_AUTH,
        default=env_or(ENV_METRICS_AUTH, default["metrics_auth"]),
        help="ask scrapers for a bearer token: any of the gRPC tokens, or an admin's "
        f"[{ENV_METRICS_AUTH}]",
    )
    add(
        "--metrics-tls",
        type=_true,
        default=_true(env_or(ENV_METRICS_TLS, default["metrics_tls"])),
        help="serve /metrics over TLS with --tls-cert/--tls-key (and --tls-client-ca) "
        f"[{ENV_METRICS_TLS}]",
    )
    add(
        "--metrics-run-labels",
        choices=RUN_LABELS,
        default=env_or(ENV_METRICS_RUN_LABELS, default["metrics_run_labels"]),
        help="label training metrics by run name, or by an opaque id logged at the run's "
        f"creation [{ENV_METRICS_RUN_LABELS}]",
    )
