"""gradserve's errors as the Tinker SDK reads them: one HTTP status per gRPC code, in one place.

The SDK retries 408, 409, 429 and 5xx for minutes and shows every other status to its user at
once, so a refusal that waiting cannot cure (a bad field, an unknown run, a missing token) must
not travel as 5xx: it would look like a hang. Limits travel as 429, which the SDK retries with
backoff. A future that failed answers 200 with `{"error", "category"}`, the shape the SDK turns
into `RequestFailedError` (category "user" for the caller's mistakes, "server" for ours).
"""

from __future__ import annotations

import grpc

from gradserve.errors import GradserveError

# gRPC code -> HTTP status.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Codes that are the server's fault, not the caller's (a failed future's category).
SERVER_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)


class TinkerHttpError(Exception):
    """A refusal answered at once, before any future exists: status and a message."""

    def __init__(self, status: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    @classmethod
    def of(cls, error: GradserveError) -> TinkerHttpError:
        return cls(HTTP_STATUS.get(error.code, 500), error.message, error.field or "")

    def body(self) -> dict[str, str]:
        """FastAPI's `detail` (what other Tinker servers answer), with the field at fault."""
        return (
            {"detail": self.message, "field": self.field}
            if self.field
            else {"detail": self.message}
        )


def failed_future(error: BaseException) -> dict[str, str]:
    """A future's failure as the SDK's RequestFailedResponse."""
    if isinstance(error, GradserveError):
        category = "server" if error.code in SERVER_CODES else "user"
        return {"error": error.message, "category": category}
    if isinstance(error, TinkerHttpError):
        return {"error": error.message, "category": "user" if error.status < 500 else "server"}
    return {"error": "internal server error", "category": "server"}


def bad_field(field: str, problem: str) -> TinkerHttpError:
    return TinkerHttpError(400, f"{field}: {problem}", field)
