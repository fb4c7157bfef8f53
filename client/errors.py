"""The client's boundary for errors: grpc.RpcError in, the project's GradserveError out.

The status code and the server's google.rpc.BadRequest field violations are kept, so callers
can branch on `error.code` and show `error.field`.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gradserve.errors import ERROR_BY_CODE, GradserveError


def error_from_rpc(error: grpc.RpcError) -> GradserveError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or str(code)
    field = None
    try:
        status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    except ValueError:
        # The details do not match the packed Status (a proxy rewrote one, or metadata was
        # cut short): keep the code and the message, without the field.
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                if bad_request.field_violations:
                    field = bad_request.field_violations[0].field
    error_class = ERROR_BY_CODE.get(code, GradserveError)
    return error_class(message, field=field, code=code)
