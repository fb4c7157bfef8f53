"""grpc.aio servers for bench/aio_compare.py: the bare echo and gradserve's unary RPCs, on one loop.

`python bench/aio_servers.py --port 0 --kind echo` serves bench/echo_server.py's unary methods (the same
functions) on a grpc.aio server; `... --kind gradserve --model linear ...` (any
server flag) serves every unary GradientService method through an adapter over the
same servicer, runs and store as server/app.py builds them, with the same RPC metrics and error
statuses as server/rpc/interceptors.py. Both print `listening on 127.0.0.1:PORT` and stop on
SIGTERM. Handlers run inline on the event loop: the store is CPU-bound under one lock, so a
thread pool would add handoffs and no parallelism. Streams are not served (the comparison is
the per-call cost); a benchmark adapter, not a production server.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `gradserve` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.echo_server import OPTIONS, SERVICE, unary_behaviours
from gradserve.defaults import SERVICE_NAME, channel_options
from gradserve.errors import GradserveError
from gradserve.server.flags import parse_args
from gradserve.server.metrics import ServerMetrics
from gradserve.server.rpc.auth import load_tokens
from gradserve.server.rpc.interceptors import status_for
from gradserve.server.rpc.servicer import GradientServicer
from gradserve.server.runs.lifecycle import RunBuilder, RunSpec
from gradserve.server.runs.names import DEFAULT_RUN
from gradserve.server.runs.principals import PrincipalTable
from gradserve.server.runs.registry import RunRegistry
from gradserve.server.store.parameter_store import ParameterStore
from gradserve.v1 import gradserve_pb2 as pb

AioBehaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _inline(behaviour: Callable[[bytes, Any], bytes]) -> AioBehaviour:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return behaviour(request, context)

    return call


def echo_handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(_inline(behaviour))
            for name, behaviour in unary_behaviours().items()
        },
    )


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _SyncContext:
    """What the servicer reads of a grpc.ServicerContext, over an aio one (whose abort is a
    coroutine the servicer could not await)."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def is_active(self) -> bool:
        return not self._context.cancelled()

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()  # type: ignore[no-any-return]

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


def _adapted(behaviour: Callable[[Any, Any], Any], method: str, metrics: ServerMetrics) -> Any:
    """The servicer's method as an aio handler, recording what server/rpc/interceptors.py records."""
    handled = {
        code: metrics.handled.labels("unary", SERVICE_NAME, method, code.name)
        for code in grpc.StatusCode
    }
    latency = metrics.handling_seconds.labels("unary", SERVICE_NAME, method)
    rejected = {code: metrics.rejected.labels(method, code.name) for code in grpc.StatusCode}

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return behaviour(request, _SyncContext(context))
        except GradserveError as error:
            code = error.code
            rejected[code].inc()
            await context.abort_with_status(status_for(error))
        except _Aborted as aborted:
            code = aborted.code
            await context.abort(aborted.code, aborted.details)
        finally:
            latency.observe(time.perf_counter() - start)
            handled[code].inc()

    return call


RAW_RESPONSES = frozenset({"GetParameters"})


def gradserve_handler(argv: Sequence[str]) -> grpc.GenericRpcHandler:
    """Every unary GradientService method over the servicer, runs and store of server/app.py."""
    config = parse_args(argv)
    if config.runtime.torch_threads is not None:
        torch.set_num_threads(config.runtime.torch_threads)
    metrics = ServerMetrics()
    builder = RunBuilder(config, metrics, ParameterStore)
    model = config.model
    default = builder.build(
        DEFAULT_RUN, "", RunSpec(model.spec, model.loss, model.optimizer, model.seed)
    )
    runs = RunRegistry(builder)
    runs.start(default)
    servicer = GradientServicer(runs, config.limits, PrincipalTable(load_tokens(config.security)))
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GradientService"].methods:
        if method.client_streaming or method.server_streaming:
            continue
        request = getattr(pb, method.input_type.name)
        response = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _adapted(getattr(servicer, method.name), method.name, metrics),
            request_deserializer=request.FromString,
            # GetParameters answers bytes already serialised (server/rpc/raw_handlers.py).
            response_serializer=(
                None if method.name in RAW_RESPONSES else response.SerializeToString
            ),
        )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


async def serve(kind: str, port: int, argv: Sequence[str]) -> None:
    if kind == "echo":
        server = grpc.aio.server(options=OPTIONS)
        server.add_generic_rpc_handlers((echo_handler(),))
    else:
        server = grpc.aio.server(options=channel_options(parse_args(argv).limits.max_message_bytes))
        server.add_generic_rpc_handlers((gradserve_handler(argv),))
        checks = health.aio.HealthServicer()
        await checks.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--kind" not in args or args[args.index("--kind") + 1] not in ("echo", "gradserve"):
        print("usage: aio_servers.py --kind echo|gradserve [--port PORT] [server flags]")
        return 2
    at = args.index("--kind")
    kind, rest = args[at + 1], args[:at] + args[at + 2 :]
    port = int(rest[rest.index("--port") + 1]) if "--port" in rest else 0
    asyncio.run(serve(kind, port, rest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
