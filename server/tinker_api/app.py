"""The Tinker API's HTTP server: aiohttp on its own thread and event loop, beside gRPC.

Why aiohttp: one maintained package that is both the server and its event loop glue, with a
request body limit built in (`client_max_size`), no ASGI framework and server pair to pin and
keep in step; the handlers are small and the work runs on the FutureQueue's threads anyway.
Same process, same RunRegistry as the gRPC servicer: no second engine. It binds --tinker-host
(loopback by default), serves over the gRPC port's TLS files when those are set, and asks for
an API key from the gRPC tokens when tokens are configured (`X-API-Key`, as the SDK sends it,
or `Authorization: Bearer`); the key's principal owns the runs it creates, exactly as over gRPC.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from gradserve.errors import GradserveError

from ..config import ServerConfig
from ..listening import check_port_free
from ..metrics_endpoint import tls_context
from ..rpc.auth import BearerTokenInterceptor
from ..runs.principals import PrincipalTable, TokenEntry
from ..runs.registry import RunRegistry
from .errors import TinkerHttpError, failed_future
from .futures import Answer, FutureQueue
from .routes import PRINCIPAL, Handler, TinkerRoutes

logger = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/api/v1/healthz"})


@dataclass
class TinkerEndpoint:
    """A started Tinker API; `port` is the one bound (useful with port 0)."""

    loop: asyncio.AbstractEventLoop
    runner: web.AppRunner
    thread: threading.Thread
    futures: FutureQueue
    host: str
    port: int
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.futures.close()
        self.loop.close()


def _key_of(request: web.Request) -> str:
    key = request.headers.get("X-API-Key", "")
    if not key:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else ""
    return key


def _middleware(tokens: Sequence[TokenEntry]) -> web.middleware:  # type: ignore[valid-type]
    principals = PrincipalTable(tokens)
    check = BearerTokenInterceptor([e.token for e in tokens]) if tokens else None

    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            metadata = [("authorization", f"Bearer {_key_of(request)}")]
            guarded_path = check is not None and request.path not in OPEN_PATHS
            if guarded_path and not check.authorized(metadata):  # type: ignore[union-attr]
                raise TinkerHttpError(401, "missing or invalid API key (X-API-Key)")
            request[PRINCIPAL] = principals.of(metadata)
            return await handler(request)
        except TinkerHttpError as error:
            return web.json_response(error.body(), status=error.status)
        except GradserveError as error:
            refusal = TinkerHttpError.of(error)
            return web.json_response(refusal.body(), status=refusal.status)
        except web.HTTPNotFound:
            detail = f"gradserve's Tinker API does not serve {request.method} {request.path[:120]}"
            return web.json_response({"detail": detail}, status=404)
        except web.HTTPException as error:
            return web.json_response({"detail": error.text or error.reason}, status=error.status)
        except Exception:
            logger.exception("tinker: %s %s failed", request.method, request.path[:120])
            return web.json_response({"detail": "internal server error"}, status=500)

    return guarded


def _failed_answer(error: BaseException) -> Answer:
    if not isinstance(error, (GradserveError, TinkerHttpError)):
        logger.error("tinker: a future failed", exc_info=error)
    return Answer(json.dumps(failed_future(error)).encode())


def start_tinker_api(
    config: ServerConfig, runs: RunRegistry, tokens: Sequence[TokenEntry]
) -> TinkerEndpoint:
    """Bind --tinker-host:--tinker-port and serve in a daemon thread; PortInUseError (one line
    for the operator) when the port is taken."""
    settings = config.tinker
    assert settings.port is not None
    check_port_free(settings.host, settings.port, "--tinker-port")
    ssl_context = tls_context(config) if config.security.tls_cert else None
    loop = asyncio.new_event_loop()
    futures = FutureQueue(
        loop,
        max_futures=settings.max_futures,
        max_bytes=settings.max_future_bytes,
        ttl_seconds=settings.session_seconds,
        on_error=_failed_answer,
    )
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[_middleware(tokens)]
    )
    for method, path, handler in TinkerRoutes(config, runs, futures).table():
        app.router.add_route(method, path, handler)
    # Bodies are decoded in one place, bounded (wire.decompressed): aiohttp's own decoding would
    # read gzip and deflate too, and refuse zstd, the one the SDK sends.
    # Stopping waits for calls in flight as gRPC does (--shutdown-grace), long polls included.
    grace = config.runtime.shutdown_grace_seconds
    runner = web.AppRunner(app, access_log=None, auto_decompress=False, shutdown_timeout=grace)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    port = int(sock.getsockname()[1])

    async def start() -> None:
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, name="gradserve-tinker", daemon=True)
    thread.start()
    return TinkerEndpoint(
        loop, runner, thread, futures, settings.host, port, ssl_context is not None
    )
