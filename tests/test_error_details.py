"""Each rejection's google.rpc details (AIP-193) from a real server, as the wire carries them and
as the client's GradserveError exposes them: ErrorInfo always, BadRequest for a field,
PreconditionFailure, QuotaFailure and RetryInfo where they fit, all under the metadata cap."""

from __future__ import annotations

import grpc
import pytest
import torch
from google.protobuf import message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from helpers import TIMEOUT, apply, compute, field_violations, linear_batch

from gradserve.client.errors import error_from_rpc
from gradserve.errors import DOMAIN, FailedPreconditionError, InvalidArgumentError, Violation
from gradserve.server.rpc.interceptors import _INTERNAL, status_for
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc

TOKEN = "s3cret-token"


def details(error: grpc.RpcError) -> dict[str, message.Message]:
    """The status's details by type name ("ErrorInfo", ...), each unpacked."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status on the error"
    found: dict[str, message.Message] = {}
    for packed in status.details:
        name = packed.TypeName().rpartition(".")[2]
        detail = getattr(error_details_pb2, name)()
        assert packed.Unpack(detail)
        assert name not in found, f"two {name} details"
        found[name] = detail
    return found


def rejected(call, *args, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **fields)
    return caught.value


def test_a_bad_field_has_error_info_and_bad_request(stub) -> None:
    error = rejected(apply, stub, -1.0)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = details(error)
    assert set(found) == {"ErrorInfo", "BadRequest"}
    assert (found["ErrorInfo"].reason, found["ErrorInfo"].domain) == ("INVALID_ARGUMENT", DOMAIN)
    assert field_violations(error) == ["learning_rate"]
    client_error = error_from_rpc(error)
    assert isinstance(client_error, InvalidArgumentError)
    assert (client_error.reason, client_error.domain, client_error.field) == (
        "INVALID_ARGUMENT",
        DOMAIN,
        "learning_rate",
    )
    assert client_error.retry_delay is None


def test_nothing_to_apply_blames_no_field(stub) -> None:
    error = rejected(apply, stub, 0.1)
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    found = details(error)
    assert "BadRequest" not in found  # learning_rate was fine: the model had nothing to apply
    assert found["ErrorInfo"].reason == "NOTHING_ACCUMULATED"
    (violation,) = found["PreconditionFailure"].violations
    assert (violation.type, violation.subject) == ("NOTHING_ACCUMULATED", "model")
    assert "RetryInfo" not in found
    client_error = error_from_rpc(error)
    assert isinstance(client_error, FailedPreconditionError)
    assert (client_error.reason, client_error.field) == ("NOTHING_ACCUMULATED", None)
    assert [v.type for v in client_error.violations] == ["NOTHING_ACCUMULATED"]


def test_a_version_conflict_has_precondition_failure_and_retry_info(stub) -> None:
    compute(stub, *linear_batch(4))
    error = rejected(apply, stub, 0.1, expected_version=7)
    assert error.code() is grpc.StatusCode.ABORTED
    found = details(error)
    info = found["ErrorInfo"]
    assert info.reason == "VERSION_CONFLICT"
    assert dict(info.metadata) == {"expected_version": "7", "model_version": "0"}
    (violation,) = found["PreconditionFailure"].violations
    assert (violation.type, violation.subject) == ("VERSION_CONFLICT", "expected_version")
    assert found["RetryInfo"].retry_delay.ToNanoseconds() == 0
    client_error = error_from_rpc(error)
    assert client_error.retry_delay == 0.0
    assert client_error.metadata["model_version"] == "0"
    assert client_error.field == "expected_version"


def test_a_non_finite_loss_says_not_finite(stub) -> None:
    error = rejected(compute, stub, torch.full((4, 1), 1e30), torch.zeros(4, 1))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    found = details(error)
    assert found["ErrorInfo"].reason == "NOT_FINITE"
    assert found["PreconditionFailure"].violations[0].subject == "inputs"


def test_a_limit_has_quota_failure_and_no_retry(make_server, make_stub) -> None:
    stub = make_stub(make_server(max_batch_elements=8))
    error = rejected(compute, stub, *linear_batch(16))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    found = details(error)
    assert found["ErrorInfo"].reason == "LIMIT_EXCEEDED"
    (violation,) = found["QuotaFailure"].violations
    assert violation.subject == "inputs.shape"
    assert "limit of 8" in violation.description
    assert "RetryInfo" not in found  # the same request would fail again
    client_error = error_from_rpc(error)
    assert [v.subject for v in client_error.violations] == ["inputs.shape"]
    assert client_error.retry_delay is None


def test_unauthenticated_calls_carry_error_info(make_server) -> None:
    server = make_server(auth_tokens=(TOKEN,))
    with grpc.insecure_channel(server.address) as channel:
        stub = gradserve_pb2_grpc.GradientServiceStub(channel)
        error = rejected(stub.GetModelInfo, pb.GetModelInfoRequest(), timeout=TIMEOUT)
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert details(error)["ErrorInfo"].reason == "UNAUTHENTICATED"
    assert error_from_rpc(error).reason == "UNAUTHENTICATED"


def test_internal_errors_carry_only_error_info() -> None:
    status = _INTERNAL
    assert status.code is grpc.StatusCode.INTERNAL
    assert status.details == "internal server error"
    (value,) = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    decoded = status_pb2.Status.FromString(value)
    assert [d.TypeName() for d in decoded.details] == ["google.rpc.ErrorInfo"]


def test_every_detail_together_stays_under_the_metadata_cap() -> None:
    error = FailedPreconditionError(
        "x" * 100_000,
        field="f" * 10_000,
        reason="NOTHING_ACCUMULATED",
        metadata={f"key{i}" * 100: "v" * 10_000 for i in range(50)},
        violations=[Violation("T" * 1000, "s" * 10_000, "d" * 10_000)] * 20,
    )
    status = status_for(error)
    size = len(status.details.encode()) + sum(
        # -bin values travel base64-encoded: 4 bytes per 3.
        len(key) + (len(value) * 4 + 2) // 3
        for key, value in status.trailing_metadata
    )
    assert size < 8 * 1024, size
