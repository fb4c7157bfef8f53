"""Where tracing lives: OpenTelemetry spans for every RPC and for the store's work, sent over OTLP.

Off unless `--otlp-endpoint` or `$OTEL_EXPORTER_OTLP_ENDPOINT` names a collector, or a caller
(the tests) runs `configure_tracing` itself. While it is off nothing from opentelemetry is
imported, and `span` / `traced` cost one global read (docs/observability.md has the figure).
On, it needs the `tracing` extra (`pip install 'gradserve[tracing]'`) and adds:

- a SERVER span per RPC (opentelemetry-instrumentation-grpc's interceptor, continuing an incoming
  `traceparent`), with the final `rpc.grpc.status_code`, also for calls the project's interceptor
  ends with `abort_with_status`, which that interceptor does not see by itself;
- child spans `gradserve.<operation>` around the store's public methods (`traced`);
- `trace_id` / `span_id` on every log record, and on the log lines of the root handlers.

Under `opentelemetry-instrument gradserve-server` the agent's provider and interceptor are used
instead (no second provider, no duplicate server spans); the rest is added the same way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import grpc

from gradserve.errors import InvalidArgumentError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

ENV_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_SERVICE_NAME = "OTEL_SERVICE_NAME"
DEFAULT_SERVICE_NAME = "gradserve-server"
TRACER_NAME = "gradserve.server"
# Probes every few seconds would drown the traces that matter.
UNTRACED_SERVICES = ("grpc.health.v1.Health",)
# Result fields copied onto a store span as gradserve.<field>.
RESULT_ATTRIBUTES = (
    "batch_size",
    "model_version",
    "accumulated_batches",
    "applied_batches",
    "applied_samples",
    "discarded_batches",
    "replayed",
)
INSTALL_HINT = "pip install 'gradserve[tracing]'"

P = ParamSpec("P")
R = TypeVar("R")

# The tracer of the store's spans while tracing is on; None while off (the hot-path check).
_tracer: Tracer | None = None
_active: Tracing | None = None
_NO_SPAN = contextlib.nullcontext()


@dataclass
class Tracing:
    """What configure_tracing installed; `shutdown` flushes the spans and removes all of it."""

    provider: TracerProvider | None
    interceptors: list[grpc.ServerInterceptor]
    _undo_logging: Callable[[], None]

    def force_flush(self) -> bool:
        return self.provider.force_flush() if self.provider is not None else True

    def shutdown(self) -> None:
        global _tracer, _active
        if _active is self:
            _tracer, _active = None, None
        self._undo_logging()
        if self.provider is not None:
            self.provider.shutdown()


def span(
    name: str, **attributes: str | int | float | bool
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one, `attributes` set as gradserve.<key>; a shared no-op
    context while tracing is off. An exception leaving it marks the span ERROR."""
    tracer = _tracer
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(
        name, attributes={f"gradserve.{key}": value for key, value in attributes.items()}
    )


def traced(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorates a store method: its call becomes span `name`, with RESULT_ATTRIBUTES (and the
    number of steps of a Train result) read from what it returns. One line per method, so the
    store's code is left as it is."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            tracer = _tracer
            if tracer is None:
                return function(*args, **kwargs)
            with tracer.start_as_current_span(name) as current:
                result = function(*args, **kwargs)
                _describe(current, result)
                return result

        return call

    return decorate


def _describe(current: Span, result: object) -> None:
    for field in RESULT_ATTRIBUTES:
        value = getattr(result, field, None)
        if isinstance(value, (bool, int, float, str)):
            current.set_attribute(f"gradserve.{field}", value)
    steps = getattr(result, "steps", None)
    if isinstance(steps, tuple):
        current.set_attribute("gradserve.steps", len(steps))
        if steps:
            current.set_attribute("gradserve.model_version", steps[-1].model_version)


def otlp_endpoint(flag: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The collector to export to: the flag, else $OTEL_EXPORTER_OTLP_ENDPOINT; None: off."""
    env = os.environ if environ is None else environ
    return flag or env.get(ENV_OTLP_ENDPOINT) or None


def server_interceptors(
    flag: str | None, environ: Mapping[str, str] | None = None
) -> list[grpc.ServerInterceptor]:
    """The interceptors create_server puts first in its chain: none while tracing is off."""
    if _active is not None:
        return list(_active.interceptors)
    if _agent_instruments_grpc():
        return adopt_agent().interceptors
    endpoint = otlp_endpoint(flag, environ)
    if endpoint is None:
        return []
    return configure_tracing(endpoint, environ=environ, set_global=True).interceptors


def configure_tracing(
    endpoint: str | None = None,
    *,
    exporter: SpanExporter | None = None,
    service_name: str | None = None,
    log_handlers: Sequence[logging.Handler] | None = None,
    environ: Mapping[str, str] | None = None,
    set_global: bool = False,
) -> Tracing:
    """Turn tracing on: a TracerProvider batching spans to `exporter` (default: OTLP/gRPC to
    `endpoint`, HOST:PORT or http[s]://HOST:PORT), the gRPC server interceptors, and trace ids
    on log records; `log_handlers` (default: the root logger's) also print them.
    `set_global` makes the provider OpenTelemetry's global one (the server does; tests not)."""
    global _tracer, _active
    env = os.environ if environ is None else environ
    try:
        from opentelemetry import trace  # noqa: PLC0415 - only when tracing is on
        from opentelemetry.instrumentation.grpc import server_interceptor  # noqa: PLC0415
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError as error:
        raise InvalidArgumentError(
            f"tracing: needs the tracing extra ({INSTALL_HINT}): {error}", field="otlp_endpoint"
        ) from None
    if exporter is None:
        if not endpoint:
            raise InvalidArgumentError(
                "tracing: no OTLP endpoint and no exporter", field="otlp_endpoint"
            )
        exporter = _otlp_exporter(endpoint)
    if _active is not None:
        _active.shutdown()
    name = service_name or env.get(ENV_SERVICE_NAME) or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    interceptors = [
        # opentelemetry-instrumentation-grpc has no annotations.
        server_interceptor(tracer_provider=provider, filter_=_traced_services()),  # type: ignore[no-untyped-call]
        StatusRecorder(),
    ]
    tracing = Tracing(provider, interceptors, _install_log_correlation(log_handlers))
    _tracer, _active = provider.get_tracer(TRACER_NAME), tracing
    return tracing


def adopt_agent(log_handlers: Sequence[logging.Handler] | None = None) -> Tracing:
    """Under `opentelemetry-instrument`: the agent's global provider makes the store's spans, its
    patched grpc.server adds the RPC spans; only the status recorder and log ids are added."""
    global _tracer, _active
    from opentelemetry import trace  # noqa: PLC0415 - the agent imported it already

    tracing = Tracing(None, [StatusRecorder()], _install_log_correlation(log_handlers))
    _tracer, _active = trace.get_tracer(TRACER_NAME), tracing
    return tracing


def _agent_instruments_grpc() -> bool:
    if "opentelemetry.instrumentation.grpc" not in sys.modules:
        return False
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorServer  # noqa: PLC0415

    return bool(GrpcInstrumentorServer().is_instrumented_by_opentelemetry)  # type: ignore[no-untyped-call]


def _otlp_exporter(endpoint: str) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
    except ImportError as error:
        raise InvalidArgumentError(
            f"tracing: needs the tracing extra ({INSTALL_HINT}): {error}", field="otlp_endpoint"
        ) from None
    # Plain HOST:PORT is a collector without TLS (a sidecar); https:// asks for TLS.
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    return OTLPSpanExporter(endpoint=url)


def _traced_services() -> Callable[[Any], bool]:
    def traced_call(details: Any) -> bool:
        service = str(details.method).lstrip("/").rpartition("/")[0]
        return service not in UNTRACED_SERVICES

    return traced_call


class StatusRecorder(grpc.ServerInterceptor):  # type: ignore[misc]
    """Sits right after the OpenTelemetry interceptor: a call ended with `abort_with_status`
    (how the project's interceptor answers every error) gets its `rpc.grpc.status_code` and,
    where the gRPC semantic conventions call the code a server error, span status ERROR.
    OpenTelemetry's own context wrapper records only `abort` and `set_code`."""

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        for kind, factory in _HANDLER_KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                return factory(
                    _recording(behavior),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


_HANDLER_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def _recording(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        return behavior(request, _RecordingContext(context))

    return call


class _RecordingContext:
    """The servicer context, with abort_with_status noted on the RPC's span first."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        from opentelemetry import trace  # noqa: PLC0415 - tracing is on when this exists

        self._context = context
        self._span = trace.get_current_span()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def abort_with_status(self, status: grpc.Status) -> None:
        record_status(self._span, status.code, status.details)
        self._context.abort_with_status(status)


# gRPC semantic conventions: on a SERVER span only these codes are errors (the others are the
# caller's mistakes, e.g. INVALID_ARGUMENT); the same table OpenTelemetry's `abort` uses.
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def record_status(current: Span, code: grpc.StatusCode, details: str | None) -> None:
    from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

    current.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_ERROR_CODES:
        current.set_status(Status(StatusCode.ERROR, f"{code}:{details}"))


def _install_log_correlation(handlers: Sequence[logging.Handler] | None) -> Callable[[], None]:
    """Every record gets trace_id and span_id (empty outside a span), usable in any format;
    the given handlers' lines end with them. Returns what undoes it."""
    from opentelemetry import trace  # noqa: PLC0415

    previous_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous_factory(*args, **kwargs)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = record.span_id = ""
        return record

    logging.setLogRecordFactory(factory)
    targets = list(logging.getLogger().handlers if handlers is None else handlers)
    previous_formatters = [(handler, handler.formatter) for handler in targets]
    for handler in targets:
        handler.setFormatter(TraceFormatter(handler.formatter))

    def undo() -> None:
        if logging.getLogRecordFactory() is factory:
            logging.setLogRecordFactory(previous_factory)
        for handler, formatter in previous_formatters:
            handler.setFormatter(formatter)

    return undo


class TraceFormatter(logging.Formatter):
    """Another formatter's line, plus ` trace_id=... span_id=...` for records logged in a span
    (on the first line, before any traceback)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        trace_id = getattr(record, "trace_id", "")
        if not trace_id:
            return text
        first, newline, rest = text.partition("\n")
        span_id = getattr(record, "span_id", "")
        return f"{first} trace_id={trace_id} span_id={span_id}{newline}{rest}"
