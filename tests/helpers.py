"""Helpers shared by the gradserve.v1 server tests: requests, error details, state snapshots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.server.app import GradientServer
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

# Every call in the tests carries a deadline: a hung server fails a test instead of the run.
TIMEOUT = 10.0


def compute(
    stub: pb_grpc.GradientServiceStub,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    **fields: object,
) -> pb.ComputeGradientsResponse:
    request = pb.ComputeGradientsRequest(
        inputs=tensor_to_proto(inputs), targets=tensor_to_proto(targets), **fields
    )
    return stub.ComputeGradients(request, timeout=TIMEOUT)


def apply(stub: pb_grpc.GradientServiceStub, learning_rate: float, **fields: object):
    request = pb.ApplyUpdateRequest(learning_rate=learning_rate, **fields)
    return stub.ApplyUpdate(request, timeout=TIMEOUT)


def set_parameters(
    stub: pb_grpc.GradientServiceStub, values: dict[str, torch.Tensor], **fields: object
) -> pb.SetParametersResponse:
    request = pb.SetParametersRequest(
        parameters=[tensor_to_proto(value, name) for name, value in values.items()], **fields
    )
    return stub.SetParameters(request, timeout=TIMEOUT)


def get_parameters(stub: pb_grpc.GradientServiceStub, *names: str) -> dict[str, torch.Tensor]:
    response = stub.GetParameters(pb.GetParametersRequest(names=names), timeout=TIMEOUT)
    return {p.name: tensor_from_proto(p).clone() for p in response.parameters}


def decoded(tensors: object) -> dict[str, torch.Tensor]:
    return {t.name: tensor_from_proto(t).clone() for t in tensors}  # type: ignore[attr-defined]


def field_violations(error: grpc.RpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest in an error's status details."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details on the error"
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [violation.field for violation in bad_request.field_violations]
    return fields


@dataclass
class Snapshot:
    """Everything a rejected request must leave as it was."""

    parameters: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor | None]
    version: int
    accumulated_batches: int
    accumulated_samples: int

    @classmethod
    def take(cls, server: GradientServer, stub: pb_grpc.GradientServiceStub) -> Snapshot:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
        return cls(
            parameters=get_parameters(stub),
            gradients=server.store.gradients(),
            version=info.model_version,
            accumulated_batches=info.accumulated_batches,
            accumulated_samples=info.accumulated_samples,
        )

    def assert_same(self, other: Snapshot) -> None:
        assert (self.version, self.accumulated_batches, self.accumulated_samples) == (
            other.version,
            other.accumulated_batches,
            other.accumulated_samples,
        )
        assert self.parameters.keys() == other.parameters.keys()
        for name, value in self.parameters.items():
            assert torch.equal(value, other.parameters[name]), name
        for name, gradient in self.gradients.items():
            again = other.gradients[name]
            assert (gradient is None) == (again is None), name
            assert gradient is None or torch.equal(gradient, again), name


def linear_batch(
    size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(size, 1, generator=generator)
    return x, 2 * x + 1 + 0.1 * torch.randn(size, 1, generator=generator)


def run_folder(checkpoint_dir: Path, run: str, owner: str = "anonymous") -> Path:
    """The folder of the live run `run` of `owner`: runs/<incarnation>/, found by its run.json
    (folders are named by the creation, not by the run's name)."""
    for folder in sorted((checkpoint_dir / "runs").iterdir()):
        document = json.loads((folder / "run.json").read_text())
        if (document["run"], document["owner"]) == (run, owner) and not document.get("deleted"):
            return folder
    raise AssertionError(f"no folder for run {run!r} of {owner!r}")
