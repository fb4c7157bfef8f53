"""The one place where exceptions become gRPC statuses, and where RPC metrics are recorded.

GradserveError -> its status code, its message and google.rpc details (AIP-193): ErrorInfo
(reason, domain, metadata) always; BadRequest when a field is named; PreconditionFailure for
FAILED_PRECONDITION and ABORTED; QuotaFailure for RESOURCE_EXHAUSTED; RetryInfo when the
error has a retry delay. Any other exception is a bug: logged here with its traceback, sent as
a generic INTERNAL (with its ErrorInfo, nothing else).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2, message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gradserve.defaults import SERVICE_NAME
from gradserve.errors import GradserveError, InternalError, InvalidArgumentError, Violation

from ..metrics import ServerMetrics

logger = logging.getLogger(__name__)


# Messages and field paths can echo what a client sent (a parameter name, a run name): the
# status travels in trailing metadata, whose limit is 16 KiB (8 KiB soft) and which carries
# the message twice (details and the packed Status), so what a status echoes is capped. The
# other details repeat less: their descriptions and metadata values are capped shorter.
MAX_STATUS_MESSAGE = 1024
MAX_STATUS_FIELD = 256
MAX_DETAIL_TEXT = 128
MAX_METADATA_KEY, MAX_METADATA_VALUE, MAX_METADATA_ENTRIES = 64, 128, 8
MAX_VIOLATIONS = 3

_PRECONDITION_CODES = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED)
_RETRY_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
)


def capped(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... ({len(text) - limit + 40} more characters)"


def _packed(detail: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def _violations(error: GradserveError) -> tuple[Violation, ...]:
    """The error's own violations, else one derived from its reason and field."""
    if error.violations:
        return error.violations
    return (Violation(error.reason, error.field or "model", error.message),)


def _details(error: GradserveError, message_text: str) -> list[message.Message]:
    metadata = {
        capped(key, MAX_METADATA_KEY): capped(value, MAX_METADATA_VALUE)
        for key, value in list(error.metadata.items())[:MAX_METADATA_ENTRIES]
    }
    details: list[message.Message] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=error.domain, metadata=metadata)
    ]
    if error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=capped(error.field, MAX_STATUS_FIELD), description=message_text
        )
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if error.code in _PRECONDITION_CODES:
        details.append(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=capped(v.type, MAX_METADATA_KEY),
                        subject=capped(v.subject, MAX_DETAIL_TEXT),
                        description=capped(v.description, MAX_DETAIL_TEXT),
                    )
                    for v in _violations(error)[:MAX_VIOLATIONS]
                ]
            )
        )
    if error.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=capped(v.subject or "server", MAX_DETAIL_TEXT),
                        description=capped(v.description, MAX_DETAIL_TEXT),
                    )
                    for v in _violations(error)[:MAX_VIOLATIONS]
                ]
            )
        )
    if error.retry_delay is not None and error.code in _RETRY_CODES:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(max(error.retry_delay, 0.0) * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return details


def status_for(error: GradserveError) -> grpc.Status:
    """The rich status an error travels as (code, message, the details above)."""
    message_text = capped(error.message, MAX_STATUS_MESSAGE)
    detail = status_pb2.Status(code=error.code.value[0], message=message_text)
    detail.details.extend(_packed(d) for d in _details(error, message_text))
    return rpc_status.to_status(detail)


_INTERNAL = status_for(InternalError("internal server error"))


class _Undecodable:
    """Stands for request bytes that do not parse: gRPC itself answers a deserializer's
    exception with INTERNAL, so the deserializer hands this on and the handler rejects it
    as INVALID_ARGUMENT (a bad request, not a server bug)."""

    def __init__(self, method: str, reason: str) -> None:
        self.error = InvalidArgumentError(
            f"request: the bytes are not a valid {method} request message ({reason})",
            field="request",
        )


def _tolerant(
    deserializer: Callable[[bytes], Any] | None, method: str
) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # protobuf's DecodeError, whatever the backend raises
            return _Undecodable(method, type(error).__name__)

    return deserialize


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise request.error
    return request


def _decoded_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        yield _decoded(request)


class ServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps every gradserve.v1 handler once (cached per method); other services pass through."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        method_path: str = details.method
        wrapped = self._wrapped.get(method_path)
        if wrapped is not None:
            return wrapped
        handler = continuation(details)
        service, _, method = method_path.lstrip("/").rpartition("/")
        if handler is None or service != SERVICE_NAME:
            return handler
        wrapped = self._wrap(handler, method)
        self._wrapped[method_path] = wrapped
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        metrics = self._metrics
        if handler.unary_unary is not None:
            kind, behavior = "unary", handler.unary_unary
        elif handler.stream_stream is not None:
            kind, behavior = "bidi_stream", handler.stream_stream
        elif handler.unary_stream is not None:
            kind, behavior = "server_stream", handler.unary_stream
        else:
            kind, behavior = "client_stream", handler.stream_unary
        handled = {
            code: metrics.handled.labels(kind, SERVICE_NAME, method, code.name)
            for code in grpc.StatusCode
        }
        latency = metrics.handling_seconds.labels(kind, SERVICE_NAME, method)

        def reject(error: GradserveError, context: grpc.ServicerContext) -> None:
            metrics.rejected.labels(method, error.code.name).inc()
            context.abort_with_status(status_for(error))

        def fail(context: grpc.ServicerContext) -> None:
            logger.exception("%s failed", method)
            context.abort_with_status(_INTERNAL)

        def finish(context: grpc.ServicerContext, code: grpc.StatusCode, start: float) -> None:
            latency.observe(time.perf_counter() - start)
            handled[code].inc()

        checked = _decoded_stream if kind in ("bidi_stream", "client_stream") else _decoded
        ok = grpc.StatusCode.OK
        clock = time.perf_counter
        observe = latency.observe
        handled_ok = handled[ok].inc

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            # The hot path of every short call: the children above are bound once per method,
            # so a call that succeeds costs two clock reads, one observe and one inc.
            start = clock()
            try:
                if request.__class__ is _Undecodable:
                    raise request.error
                response = behavior(request, context)
            except GradserveError as error:
                observe(clock() - start)
                handled[error.code].inc()
                reject(error, context)  # raises: abort_with_status ends the call
                return None
            except Exception:
                code = context.code()
                unexpected = code is None or code is ok
                observe(clock() - start)
                handled[grpc.StatusCode.INTERNAL if unexpected else code].inc()
                if unexpected:
                    fail(context)  # raises, as abort_with_status does
                raise
            observe(clock() - start)
            handled_ok()
            return response

        @contextlib.contextmanager
        def accounted(context: grpc.ServicerContext) -> Iterator[None]:
            # One outcome for a streamed call, whether it returns (client stream) or yields
            # (server and bidi streams): its code counted, its status set, its time observed.
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                yield
            except GradserveError as error:
                code = error.code
                reject(error, context)
            except Exception:
                code = context.code()
                if code is None or code is grpc.StatusCode.OK:
                    code = grpc.StatusCode.INTERNAL
                    fail(context)
                raise
            finally:
                finish(context, code, start)

        def stream_in(request: Any, context: grpc.ServicerContext) -> Any:
            with accounted(context):
                return behavior(checked(request), context)

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with accounted(context):
                yield from behavior(checked(request), context)

        is_stream_response = kind in ("bidi_stream", "server_stream")
        new_behavior = streaming if is_stream_response else unary if kind == "unary" else stream_in
        factory = {
            "unary": grpc.unary_unary_rpc_method_handler,
            "bidi_stream": grpc.stream_stream_rpc_method_handler,
            "server_stream": grpc.unary_stream_rpc_method_handler,
            "client_stream": grpc.stream_unary_rpc_method_handler,
        }[kind]
        return factory(
            new_behavior,
            request_deserializer=_tolerant(handler.request_deserializer, method),
            response_serializer=handler.response_serializer,
        )
