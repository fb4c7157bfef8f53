"""The client's boundary for errors: grpc.RpcError in, the project's GradserveError out.

The status code and the server's google.rpc details are kept (docs/protocol.md#errors):
`error.field` (BadRequest), `error.reason`, `error.domain`, `error.metadata` (ErrorInfo),
`error.violations` (PreconditionFailure, QuotaFailure) and `error.retry_delay` (RetryInfo:
seconds, None when the server sent none), so callers branch on stable values, not messages.
"""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf import any_pb2, message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gradserve.errors import ERROR_BY_CODE, GradserveError, Violation

_M = TypeVar("_M", bound=message.Message)


def _unpacked(detail: any_pb2.Any, kind: type[_M]) -> _M | None:
    value = kind()
    # Unpack checks the type URL: False (nothing copied) when the detail is another kind.
    return value if detail.Unpack(value) else None


def _apply(detail: any_pb2.Any, error: GradserveError) -> None:
    """Copy what one packed detail says onto `error`; unknown kinds are skipped."""
    if (info := _unpacked(detail, error_details_pb2.ErrorInfo)) is not None:
        error.reason, error.domain, error.metadata = info.reason, info.domain, dict(info.metadata)
    elif (bad := _unpacked(detail, error_details_pb2.BadRequest)) is not None:
        if bad.field_violations:
            error.field = bad.field_violations[0].field
    elif (pre := _unpacked(detail, error_details_pb2.PreconditionFailure)) is not None:
        error.violations += tuple(
            Violation(v.type, v.subject, v.description) for v in pre.violations
        )
    elif (quota := _unpacked(detail, error_details_pb2.QuotaFailure)) is not None:
        error.violations += tuple(Violation("", v.subject, v.description) for v in quota.violations)
    elif (retry := _unpacked(detail, error_details_pb2.RetryInfo)) is not None:
        error.retry_delay = retry.retry_delay.ToNanoseconds() / 1e9


def _status(error: grpc.RpcError) -> status_pb2.Status | None:
    try:
        return rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    except ValueError:
        # The details do not match the packed Status (a proxy rewrote one, or metadata was
        # cut short): keep the code and the message, without the details.
        return None


def error_from_rpc(error: grpc.RpcError) -> GradserveError:
    """The GradserveError for `error`'s status code, with the server's details copied on."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or str(code)
    result = ERROR_BY_CODE.get(code, GradserveError)(message, code=code)
    result.retry_delay = None  # what the server says, not the class's default
    status = _status(error)
    for detail in status.details if status is not None else ():
        _apply(detail, result)
    return result
