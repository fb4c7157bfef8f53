"""The project's exceptions: what went wrong, why (a stable reason), the field at fault, the code.

Server code raises these; one interceptor (gradserve.server.rpc.interceptors) turns them into a
status with google.rpc details (ErrorInfo with `reason` and DOMAIN always; BadRequest,
PreconditionFailure, QuotaFailure, RetryInfo where they fit; docs/protocol.md#errors). The
client raises them again from the status it receives (gradserve.client.errors).

`reason` is UPPER_SNAKE and stable: clients branch on it, messages may change. Each class has
a default, so a raise site names one only when it is more specific than its class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

# ErrorInfo.domain of every gradserve error: reasons are unique within it.
DOMAIN = "gradserve.v1"


@dataclass(frozen=True)
class Violation:
    """One failed precondition or exceeded limit (PreconditionFailure / QuotaFailure)."""

    type: str  # a reason-like kind ("VERSION_CONFLICT"); "" in a QuotaFailure
    subject: str  # what it is about: a field path, "model", "server"
    description: str


class GradserveError(Exception):
    """Base class; `code` is the gRPC status the error travels as, `reason` why.

    `retry_delay`: seconds after which the same call may succeed (RetryInfo); None: do not
    retry it as is."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"
    retry_delay: float | None = None

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[Violation] = (),
        retry_delay: float | None = None,
        domain: str = DOMAIN,
    ) -> None:
        super().__init__(message)
        self.message = message
        # Dotted path of the request field at fault ("inputs.shape"), when one is.
        self.field = field
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason
        if retry_delay is not None:
            self.retry_delay = retry_delay
        self.domain = domain
        # Small facts a program may read (ErrorInfo.metadata): "model_version": "7".
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations: tuple[Violation, ...] = tuple(violations)

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(GradserveError):
    """A request field is malformed; nothing was changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class FailedPreconditionError(GradserveError):
    """The request is well formed but the model's state does not allow it."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class VersionConflictError(GradserveError):
    """expected_version differs from the model's version."""

    code = grpc.StatusCode.ABORTED
    reason = "VERSION_CONFLICT"
    retry_delay = 0.0  # at once, after re-reading the model's version


class ResourceExhaustedError(GradserveError):
    """Over a configured limit (message size, batch elements, concurrent calls)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "LIMIT_EXCEEDED"  # a configured limit: no retry unless a site says it is transient


class UnavailableError(GradserveError):
    """The server cannot take the call now (starting, shutting down, unreachable)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"
    retry_delay = 1.0


class NotFoundError(GradserveError):
    """No such run or checkpoint, or not the caller's (names do not leak)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExistsError(GradserveError):
    """A name that is taken (a run, a checkpoint)."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class UnauthenticatedError(GradserveError):
    """A missing or wrong bearer token (UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class InternalError(GradserveError):
    """A bug in the server (INTERNAL): the message is generic, the details are in its log."""

    code = grpc.StatusCode.INTERNAL


ERROR_BY_CODE: dict[grpc.StatusCode, type[GradserveError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        FailedPreconditionError,
        VersionConflictError,
        ResourceExhaustedError,
        UnavailableError,
        NotFoundError,
        AlreadyExistsError,
        UnauthenticatedError,
        InternalError,
    )
}
