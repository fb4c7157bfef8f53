"""Dataset passes between plain types (gradserve.pass_types) and gradserve.v1 messages:
DatasetPass in TrainRequest.dataset_pass, PassResult in TrainResponse.pass_result.

Paired `x_to_proto` / `x_from_proto` functions, as in gradserve.serde. The answer's arrays are
packed repeated scalars, each assigned once with `extend`: one submessage per step is what a
pass exists to avoid. docs/datasets.md.
"""

from __future__ import annotations

from gradserve.errors import InvalidArgumentError
from gradserve.pass_types import DatasetPass, PassResult
from gradserve.serde import reduction_from_proto, reduction_to_proto
from gradserve.serde_datasets import check_named_samples, named_samples_into_proto
from gradserve.v1 import gradserve_pb2 as pb


def dataset_pass_into_proto(descriptor: DatasetPass, message: pb.DatasetPass) -> pb.DatasetPass:
    named_samples_into_proto(descriptor, message)
    message.batch_size = descriptor.batch_size
    message.learning_rate = descriptor.learning_rate
    message.reduction = reduction_to_proto(descriptor.reduction)
    if descriptor.hyperparameters:
        message.hyperparameters.update(descriptor.hyperparameters)
    if descriptor.max_grad_norm is not None:
        message.max_grad_norm = descriptor.max_grad_norm
    if descriptor.expected_version is not None:
        message.expected_version = descriptor.expected_version
    message.gradient_norms = descriptor.gradient_norms
    if descriptor.seed is not None:
        message.seed = descriptor.seed
    return message


def dataset_pass_from_proto(message: pb.DatasetPass, field: str = "dataset_pass") -> DatasetPass:
    """The pass as named; its samples are checked against the dataset where it lives
    (server/datasets/passes.py)."""
    check_named_samples(message, field)
    if message.batch_size < 1:
        raise InvalidArgumentError(
            f"{field}.batch_size: {message.batch_size}, expected at least 1",
            field=f"{field}.batch_size",
        )
    return DatasetPass(
        dataset=message.dataset,
        batch_size=message.batch_size,
        learning_rate=message.learning_rate,
        indices=tuple(message.indices),
        start=message.start,
        count=message.count,
        reduction=reduction_from_proto(message.reduction, f"{field}.reduction"),
        hyperparameters=dict(message.hyperparameters),
        max_grad_norm=message.max_grad_norm if message.HasField("max_grad_norm") else None,
        expected_version=(
            message.expected_version if message.HasField("expected_version") else None
        ),
        gradient_norms=message.gradient_norms,
        seed=message.seed if message.HasField("seed") else None,
    )


def pass_result_into_proto(result: PassResult, message: pb.PassResult) -> pb.PassResult:
    message.losses.extend(result.losses)
    message.gradient_norms.extend(result.gradient_norms)
    message.clipped.extend(result.clipped)
    message.model_version = result.model_version
    return message


def pass_result_from_proto(message: pb.PassResult) -> PassResult:
    return PassResult(
        losses=tuple(message.losses),
        model_version=message.model_version,
        gradient_norms=tuple(message.gradient_norms),
        clipped=tuple(message.clipped),
    )


def pass_response_to_proto(result: PassResult, request_id: str = "") -> pb.TrainResponse:
    response = pb.TrainResponse(request_id=request_id)
    pass_result_into_proto(result, response.pass_result)
    return response
