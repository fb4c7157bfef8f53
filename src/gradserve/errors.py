"""The project's exceptions: what went wrong, the request field at fault, and the gRPC code.

Server code raises these; one interceptor (gradserve.server.interceptors) turns them into a
status. The client raises them again from the status it receives (gradserve.client.errors).
"""

from __future__ import annotations

import grpc


class GradserveError(Exception):
    """Base class; `code` is the gRPC status the error travels as."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: grpc.StatusCode | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # Dotted path of the request field at fault ("inputs.shape"), when one is.
        self.field = field
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(GradserveError):
    """A request field is malformed; nothing was changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPreconditionError(GradserveError):
    """The request is well formed but the model's state does not allow it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class VersionConflictError(GradserveError):
    """expected_version differs from the model's version."""

    code = grpc.StatusCode.ABORTED


class ResourceExhaustedError(GradserveError):
    """Over a configured limit (message size, batch elements, concurrent calls)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(GradserveError):
    """The server cannot take the call now (starting, shutting down, unreachable)."""

    code = grpc.StatusCode.UNAVAILABLE


class NotFoundError(GradserveError):
    """No such run or checkpoint, or not the caller's (names do not leak)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(GradserveError):
    """A name that is taken (a run, a checkpoint)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class UnauthenticatedError(GradserveError):
    code = grpc.StatusCode.UNAUTHENTICATED


class InternalError(GradserveError):
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
