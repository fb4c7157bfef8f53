"""serde's losses part: LossSpec, weights and the client-computed path, to and from messages.

Paired `x_to_proto` / `x_from_proto`, as in gradserve.serde (which uses these for Train's
batches; LossInfo, part of the model info, is there). A batch that names no loss and sends no weights decodes to None, so the
server takes its run's loss without looking further.
"""

from __future__ import annotations

import torch

from gradserve.codec import tensor_from_proto, tensor_into_proto, tensor_to_proto
from gradserve.errors import InvalidArgumentError
from gradserve.token_types import TokenBatchLoss
from gradserve.types import (
    BatchLoss,
    GradientResult,
    LossSpec,
    OutputsResult,
    WeightedReduction,
)
from gradserve.v1 import gradserve_pb2 as pb

_WEIGHTED_TO_PROTO = {
    WeightedReduction.SUM: pb.WEIGHTED_REDUCTION_SUM,
    WeightedReduction.MEAN: pb.WEIGHTED_REDUCTION_MEAN,
    WeightedReduction.NORMALIZED: pb.WEIGHTED_REDUCTION_NORMALIZED,
}
_WEIGHTED_FROM_PROTO: dict[int, WeightedReduction] = {
    value: key for key, value in _WEIGHTED_TO_PROTO.items()
}


# ComputeGradientsRequest and Batch: the messages a batch chooses its loss in (same fields).
_WithLoss = pb.ComputeGradientsRequest | pb.Batch


def weighted_reduction_to_proto(reduction: WeightedReduction | None) -> pb.WeightedReduction:
    return pb.WEIGHTED_REDUCTION_UNSPECIFIED if reduction is None else _WEIGHTED_TO_PROTO[reduction]


def weighted_reduction_from_proto(
    value: int, field: str = "weighted_reduction"
) -> WeightedReduction | None:
    if value == pb.WEIGHTED_REDUCTION_UNSPECIFIED:
        return None
    try:
        return _WEIGHTED_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgumentError(f"{field}: unknown value {value}", field=field) from None


def loss_spec_to_proto(spec: LossSpec) -> pb.LossSpec:
    return pb.LossSpec(name=spec.name, options=dict(spec.options))


def loss_spec_from_proto(message: pb.LossSpec) -> LossSpec:
    return LossSpec(message.name, dict(message.options))


def batch_loss_into_proto(choice: BatchLoss | None, message: _WithLoss) -> None:
    if choice is None:
        return
    if choice.loss is not None:
        message.loss.CopyFrom(loss_spec_to_proto(choice.loss))
    if choice.sample_weights is not None:
        tensor_into_proto(choice.sample_weights, message.sample_weights)
    if isinstance(choice, TokenBatchLoss):
        if choice.logprobs is not None:
            tensor_into_proto(choice.logprobs, message.logprobs)
        if choice.advantages is not None:
            tensor_into_proto(choice.advantages, message.advantages)
        if choice.attention_mask is not None:
            tensor_into_proto(choice.attention_mask, message.attention_mask)
    message.weighted_reduction = weighted_reduction_to_proto(choice.weighted_reduction)


def batch_loss_from_proto(
    message: _WithLoss, prefix: str = "", max_elements: int | None = None
) -> BatchLoss | None:
    """None when the batch names no loss, sends no weights and sets no reduction; a
    TokenBatchLoss when it sends per-token `logprobs`, `advantages` or `attention_mask`."""
    has_loss = message.HasField("loss")
    per_token = [
        name for name in ("logprobs", "advantages", "attention_mask") if message.HasField(name)
    ]
    chosen_any = has_loss or message.HasField("sample_weights") or message.weighted_reduction
    if not (chosen_any or per_token):
        return None
    tensors: dict[str, torch.Tensor | None] = {}
    for name in ("sample_weights", *per_token):
        tensors[name] = None
        if message.HasField(name):
            tensors[name] = tensor_from_proto(
                getattr(message, name), f"{prefix}{name}", max_elements=max_elements
            )
    chosen = BatchLoss(
        loss=loss_spec_from_proto(message.loss) if has_loss else None,
        sample_weights=tensors.pop("sample_weights"),
        weighted_reduction=weighted_reduction_from_proto(
            message.weighted_reduction, f"{prefix}weighted_reduction"
        ),
    )
    if not per_token:
        return chosen
    return TokenBatchLoss(chosen.loss, chosen.sample_weights, chosen.weighted_reduction, **tensors)


def train_batch_losses_from_proto(
    message: pb.TrainStep, field: str, max_elements: int | None = None
) -> tuple[BatchLoss | None, ...]:
    """Each batch's own loss; () when no batch names one (the run's loss for all)."""
    losses = tuple(
        batch_loss_from_proto(batch, f"{field}.batches[{number}].", max_elements)
        for number, batch in enumerate(message.batches)
    )
    return losses if any(loss is not None for loss in losses) else ()


# -- the client-computed path ----------------------------------------------------------------


def outputs_result_to_proto(result: OutputsResult) -> pb.ComputeOutputsResponse:
    return pb.ComputeOutputsResponse(
        handle=result.handle,
        outputs=tensor_to_proto(result.outputs),
        model_version=result.model_version,
        expires_in_seconds=result.expires_in_seconds,
        batch_size=result.batch_size,
    )


def outputs_result_from_proto(message: pb.ComputeOutputsResponse) -> OutputsResult:
    outputs: torch.Tensor = tensor_from_proto(message.outputs, "outputs").clone()
    return OutputsResult(
        handle=message.handle,
        outputs=outputs,
        model_version=message.model_version,
        expires_in_seconds=message.expires_in_seconds,
        batch_size=message.batch_size,
    )


def backward_result_to_proto(result: GradientResult) -> pb.BackwardOutputsResponse:
    return pb.BackwardOutputsResponse(
        loss=result.loss,
        batch_size=result.batch_size,
        accumulated_batches=result.accumulated_batches,
        model_version=result.model_version,
        accumulated_samples=result.accumulated_samples,
    )


def backward_result_from_proto(message: pb.BackwardOutputsResponse) -> GradientResult:
    return GradientResult(
        loss=message.loss,
        batch_size=message.batch_size,
        accumulated_batches=message.accumulated_batches,
        accumulated_samples=message.accumulated_samples,
        model_version=message.model_version,
    )


def batch_loss(
    loss: LossSpec | str | None,
    sample_weights: torch.Tensor | None,
    weighted_reduction: WeightedReduction | str | None,
) -> BatchLoss | None:
    """A BatchLoss from a client's arguments (None when all are None): a loss name or
    LossSpec, weights, a reduction ("sum", "mean", "normalized"; ValueError otherwise)."""
    if loss is None and sample_weights is None and weighted_reduction is None:
        return None
    spec = LossSpec(loss) if isinstance(loss, str) else loss
    reduction = None if weighted_reduction is None else WeightedReduction.parse(weighted_reduction)
    return BatchLoss(spec, sample_weights, reduction)
