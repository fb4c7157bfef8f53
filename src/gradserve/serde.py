"""The one place where gradserve's plain types meet gradserve.v1 messages.

Paired `x_to_proto` / `x_from_proto` functions for every type in `gradserve.types`, used by the
servicer (requests in, results out) and by GradientClient (requests out, results in), so both
sides agree on every field by construction. Tensors go through `gradserve.codec`; decoded
tensors that a caller may keep are cloned (a decode is a read-only view of the message).
Errors name the field, as the codec's do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from gradserve.codec import (
    WIRE_TYPES,
    dtype_from_proto,
    dtype_to_proto,
    tensor_from_proto,
    tensor_into_proto,
)
from gradserve.errors import InvalidArgumentError
from gradserve.serde_datasets import dataset_batch_from_proto, dataset_batch_into_proto
from gradserve.serde_losses import batch_loss_into_proto, train_batch_losses_from_proto
from gradserve.types import (
    DatasetBatch,
    EvaluationResult,
    GradientResult,
    LossInfo,
    ModelInfo,
    Reduction,
    StepResult,
    TensorSpec,
    TrainResult,
    TrainStep,
    UpdateResult,
)
from gradserve.v1 import gradserve_pb2 as pb

WIRE_DTYPES = frozenset(wire.torch_dtype for wire in WIRE_TYPES)

# -- reductions ----------------------------------------------------------------------------

_REDUCTION_TO_PROTO = {Reduction.SUM: pb.REDUCTION_SUM, Reduction.MEAN: pb.REDUCTION_MEAN}
_REDUCTION_FROM_PROTO: dict[int, Reduction] = {
    # Unset means SUM: PyTorch's .grad, and what a client that predates the field wants.
    pb.REDUCTION_UNSPECIFIED: Reduction.SUM,
    pb.REDUCTION_SUM: Reduction.SUM,
    pb.REDUCTION_MEAN: Reduction.MEAN,
}


def reduction_to_proto(reduction: Reduction) -> pb.Reduction:
    return _REDUCTION_TO_PROTO[reduction]


def reduction_from_proto(value: int, field: str = "reduction") -> Reduction:
    try:
        return _REDUCTION_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgumentError(f"{field}: unknown value {value}", field=field) from None


# -- tensor specs and model info -----------------------------------------------------------


def tensor_spec_to_proto(spec: TensorSpec) -> pb.TensorSpec:
    return pb.TensorSpec(name=spec.name, dtype=dtype_to_proto(spec.dtype), shape=spec.shape)


def tensor_spec_from_proto(message: pb.TensorSpec, field: str = "spec") -> TensorSpec:
    return TensorSpec(
        name=message.name,
        dtype=dtype_from_proto(message.dtype, f"{field}.dtype"),
        shape=tuple(message.shape),
    )


def loss_info_to_proto(info: LossInfo) -> pb.LossInfo:
    return pb.LossInfo(
        name=info.name, target=tensor_spec_to_proto(info.target), options=list(info.options)
    )


def loss_info_from_proto(message: pb.LossInfo, field: str = "losses[0]") -> LossInfo:
    target = tensor_spec_from_proto(message.target, f"{field}.target")
    return LossInfo(message.name, target, tuple(message.options))


def model_info_to_proto(info: ModelInfo) -> pb.GetModelInfoResponse:
    return pb.GetModelInfoResponse(
        model=info.model,
        model_spec=info.model_spec,
        parameters=[tensor_spec_to_proto(spec) for spec in info.parameters],
        parameter_count=info.parameter_count,
        input=tensor_spec_to_proto(info.input),
        target=tensor_spec_to_proto(info.target),
        loss=info.loss,
        optimizer=info.optimizer,
        model_version=info.model_version,
        accumulated_batches=info.accumulated_batches,
        accumulated_samples=info.accumulated_samples,
        max_batch_elements=info.max_batch_elements,
        max_message_bytes=info.max_message_bytes,
        run=info.run,
        buffers=[tensor_spec_to_proto(spec) for spec in info.buffers],
        losses=[loss_info_to_proto(loss) for loss in info.losses],
        dataset_bytes_available=info.dataset_bytes_available,
        base_model=info.base_model,
        base_model_digest=info.base_model_digest,
    )


def model_info_from_proto(message: pb.GetModelInfoResponse) -> ModelInfo:
    return ModelInfo(
        model=message.model,
        model_spec=message.model_spec,
        parameters=tuple(
            tensor_spec_from_proto(spec, f"parameters[{index}]")
            for index, spec in enumerate(message.parameters)
        ),
        parameter_count=message.parameter_count,
        input=tensor_spec_from_proto(message.input, "input"),
        target=tensor_spec_from_proto(message.target, "target"),
        loss=message.loss,
        optimizer=message.optimizer,
        model_version=message.model_version,
        accumulated_batches=message.accumulated_batches,
        accumulated_samples=message.accumulated_samples,
        max_batch_elements=message.max_batch_elements,
        max_message_bytes=message.max_message_bytes,
        run=message.run,
        buffers=tuple(
            tensor_spec_from_proto(spec, f"buffers[{index}]")
            for index, spec in enumerate(message.buffers)
        ),
        losses=tuple(
            loss_info_from_proto(loss, f"losses[{index}]")
            for index, loss in enumerate(message.losses)
        ),
        dataset_bytes_available=message.dataset_bytes_available,
        base_model=message.base_model,
        base_model_digest=message.base_model_digest,
    )


# -- gradients, updates, evaluation --------------------------------------------------------


def gradient_result_to_proto(result: GradientResult) -> pb.ComputeGradientsResponse:
    response = pb.ComputeGradientsResponse(
        loss=result.loss,
        batch_size=result.batch_size,
        accumulated_batches=result.accumulated_batches,
        accumulated_samples=result.accumulated_samples,
        model_version=result.model_version,
    )
    for name, gradient in result.gradients.items():
        tensor_into_proto(gradient, response.gradients.add(), name)
    return response


def gradient_result_from_proto(message: pb.ComputeGradientsResponse) -> GradientResult:
    return GradientResult(
        loss=message.loss,
        batch_size=message.batch_size,
        accumulated_batches=message.accumulated_batches,
        accumulated_samples=message.accumulated_samples,
        model_version=message.model_version,
        gradients=named_tensors_from_proto(message.gradients, "gradients"),
        logprobs=tensor_from_proto(message.logprobs, "logprobs").clone()
        if message.HasField("logprobs")
        else None,
    )


def update_result_to_proto(result: UpdateResult) -> pb.ApplyUpdateResponse:
    return pb.ApplyUpdateResponse(
        model_version=result.model_version,
        applied_batches=result.applied_batches,
        applied_samples=result.applied_samples,
        gradient_norm=result.gradient_norm,
        clipped=result.clipped,
    )


def update_result_from_proto(message: pb.ApplyUpdateResponse) -> UpdateResult:
    return UpdateResult(
        model_version=message.model_version,
        applied_batches=message.applied_batches,
        applied_samples=message.applied_samples,
        gradient_norm=message.gradient_norm,
        clipped=message.clipped,
    )


def evaluation_result_to_proto(result: EvaluationResult) -> pb.EvaluateResponse:
    response = pb.EvaluateResponse(
        loss=result.loss or 0.0,
        has_loss=result.loss is not None,
        batch_size=result.batch_size,
        model_version=result.model_version,
    )
    if result.predictions is not None:
        tensor_into_proto(result.predictions, response.predictions)
    return response


def evaluation_result_from_proto(message: pb.EvaluateResponse) -> EvaluationResult:
    predictions = None
    if message.HasField("predictions"):
        predictions = tensor_from_proto(message.predictions, "predictions").clone()
    return EvaluationResult(
        loss=message.loss if message.has_loss else None,
        batch_size=message.batch_size,
        model_version=message.model_version,
        predictions=predictions,
    )


def named_tensors_from_proto(messages: Iterable[pb.Tensor], field: str) -> dict[str, torch.Tensor]:
    """Tensors by their names, each its own writable copy."""
    return {
        message.name: tensor_from_proto(message, f"{field}[{index}]").clone()
        for index, message in enumerate(messages)
    }


def named_tensor_views_from_proto(
    messages: Iterable[pb.Tensor], field: str
) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) in message order, repeats kept, each a read-only view of its message
    (for a receiver that only copies them somewhere: SetParameters on the server)."""
    return [
        (message.name, tensor_from_proto(message, f"{field}[{index}]"))
        for index, message in enumerate(messages)
    ]


# -- Train steps ---------------------------------------------------------------------------


def train_step_to_proto(step: TrainStep) -> pb.TrainStep:
    message = pb.TrainStep(
        apply_update=step.apply_update,
        learning_rate=step.learning_rate,
        reduction=reduction_to_proto(step.reduction),
        expected_version=step.expected_version,
        hyperparameters=step.hyperparameters,
        max_grad_norm=step.max_grad_norm,
        seed=step.seed,
    )
    for inputs, targets in step.batches:
        batch = message.batches.add()
        tensor_into_proto(inputs, batch.inputs)
        tensor_into_proto(targets, batch.targets)
    for named in step.dataset_batches:
        dataset_batch_into_proto(named, message.batches.add().dataset)
    for index, choice in enumerate(step.batch_losses):
        batch_loss_into_proto(choice, message.batches[index])
    return message


# Resolves a batch named by dataset samples into (inputs, targets), naming `field` in errors.
Resolver = Callable[[DatasetBatch, str], tuple[torch.Tensor, torch.Tensor]]


def train_step_from_proto(
    message: pb.TrainStep,
    field: str = "steps[0]",
    max_elements: int | None = None,
    resolve: Resolver | None = None,
) -> TrainStep:
    """The batches are read-only views of the message's bytes (the server only reads them).
    Batches that name dataset samples become tensors through `resolve`, in their place;
    without it they are kept as `dataset_batches`."""
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    named: list[DatasetBatch] = []
    named_as: list[DatasetBatch | None] = []
    for number, batch in enumerate(message.batches):
        where = f"{field}.batches[{number}]"
        if batch.HasField("dataset"):
            if batch.HasField("inputs") or batch.HasField("targets"):
                raise InvalidArgumentError(
                    f"{where}.dataset: a batch is named by a dataset or sent (inputs and "
                    "targets), not both",
                    field=f"{where}.dataset",
                )
            chosen = dataset_batch_from_proto(batch.dataset, f"{where}.dataset")
            if resolve is None:
                named.append(chosen)
            else:
                batches.append(resolve(chosen, f"{where}.dataset"))
                named_as.append(chosen)
            continue
        named_as.append(None)
        batches.append(
            (
                tensor_from_proto(batch.inputs, f"{where}.inputs", max_elements),
                tensor_from_proto(batch.targets, f"{where}.targets", max_elements),
            )
        )
    return TrainStep(
        batches=tuple(batches),
        dataset_batches=tuple(named),
        named_as=tuple(named_as) if any(named_as) else (),
        apply_update=message.apply_update,
        learning_rate=message.learning_rate,
        reduction=reduction_from_proto(message.reduction, f"{field}.reduction"),
        expected_version=(
            message.expected_version if message.HasField("expected_version") else None
        ),
        hyperparameters=dict(message.hyperparameters),
        max_grad_norm=message.max_grad_norm if message.HasField("max_grad_norm") else None,
        batch_losses=train_batch_losses_from_proto(message, field, max_elements),
        seed=message.seed if message.HasField("seed") else None,
    )


def step_result_to_proto(result: StepResult) -> pb.StepResult:
    return pb.StepResult(
        losses=result.losses,
        model_version=result.model_version,
        accumulated_batches=result.accumulated_batches,
        applied=result.applied,
        applied_batches=result.applied_batches,
        gradient_norm=result.gradient_norm,
        clipped=result.clipped,
    )


def step_result_from_proto(message: pb.StepResult) -> StepResult:
    return StepResult(
        losses=tuple(message.losses),
        model_version=message.model_version,
        accumulated_batches=message.accumulated_batches,
        applied=message.applied,
        applied_batches=message.applied_batches,
        gradient_norm=message.gradient_norm,
        clipped=message.clipped,
    )


def train_result_to_proto(result: TrainResult, request_id: str = "") -> pb.TrainResponse:
    return pb.TrainResponse(
        steps=[step_result_to_proto(step) for step in result.steps], request_id=request_id
    )


def train_result_from_proto(message: pb.TrainResponse) -> TrainResult:
    return TrainResult(tuple(step_result_from_proto(step) for step in message.steps))
