"""GradientClient's unary calls of a training step and of the model they act on.

Built over a CallChannel: compute gradients into the run's accumulator, apply or discard
them, evaluate, set parameters, read the model's description and its autograd graph. Calls
that change the server carry a request_id (one is made when the caller gives none), so the
channel's retry after UNAVAILABLE is safe: the server answers a repeated id with the first
answer and applies nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gradserve import serde, serde_graph
from gradserve.codec import tensor_into_proto, tensor_to_proto
from gradserve.graph_types import GraphDescription
from gradserve.serde_datasets import dataset_batch_into_proto
from gradserve.serde_losses import batch_loss, batch_loss_into_proto
from gradserve.types import (
    DatasetBatch,
    EvaluationResult,
    GradientResult,
    LossSpec,
    ModelInfo,
    Reduction,
    UpdateResult,
    WeightedReduction,
)
from gradserve.v1 import gradserve_pb2 as pb

from .call_channel import CallChannel
from .retry import new_request_id


class StepCalls:
    """Gradients, updates, evaluation and the model of the channel's run."""

    def __init__(self, channel: CallChannel) -> None:
        self._channel = channel

    def compute_gradients(
        self,
        inputs: torch.Tensor | DatasetBatch,
        targets: torch.Tensor | None = None,
        *,
        request_id: str | None = None,
        return_gradients: bool = False,
        based_on_version: int | None = None,
        loss: LossSpec | str | None = None,
        sample_weights: torch.Tensor | None = None,
        weighted_reduction: WeightedReduction | str | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
    ) -> GradientResult:
        """Forward and backward one batch, adding its gradients to the run's accumulator.

        `based_on_version`: the model version this batch was prepared against (the server's
        async mode bounds the staleness; docs/scaling.md). `loss` (a name or LossSpec),
        `sample_weights` [N], `weighted_reduction`: this batch's own loss, docs/losses.md.
        `inputs` a DatasetBatch (and no targets): samples of a dataset uploaded to the run.
        `seed`: the forward's dropout masks come from torch.manual_seed(seed) (randomness.md).
        `return_logprobs` (token runs): the result's `logprobs`, float32 [B, T], the targets'
        log-probabilities under the weights the gradients were computed at."""
        request = pb.ComputeGradientsRequest(
            request_id=request_id or new_request_id(),
            return_gradients=return_gradients,
            return_logprobs=return_logprobs,
            run=self._channel.run,
            seed=seed,
        )
        if isinstance(inputs, DatasetBatch):
            if targets is not None:
                raise TypeError("compute_gradients: a DatasetBatch names its targets too")
            dataset_batch_into_proto(inputs, request.dataset)
        else:
            if targets is None:
                raise TypeError("compute_gradients: targets are needed with inputs")
            tensor_into_proto(inputs, request.inputs)
            tensor_into_proto(targets, request.targets)
        batch_loss_into_proto(batch_loss(loss, sample_weights, weighted_reduction), request)
        if based_on_version is not None:
            request.based_on_version = based_on_version
        response = self._channel.call(self._channel.stub.ComputeGradients, request)
        return serde.gradient_result_from_proto(response)

    def apply_update(
        self,
        learning_rate: float,
        *,
        reduction: str | Reduction = Reduction.SUM,
        expected_version: int | None = None,
        request_id: str | None = None,
        hyperparameters: Mapping[str, float] | None = None,
        max_grad_norm: float | None = None,
    ) -> UpdateResult:
        """One optimizer step with the accumulated gradients; `hyperparameters` and
        `max_grad_norm` apply to this step only. An unknown reduction raises ValueError before
        anything is sent."""
        request = pb.ApplyUpdateRequest(
            learning_rate=learning_rate,
            reduction=serde.reduction_to_proto(Reduction.parse(reduction)),
            request_id=request_id or new_request_id(),
            run=self._channel.run,
            expected_version=expected_version,
            hyperparameters=hyperparameters,
            max_grad_norm=max_grad_norm,
        )
        response = self._channel.call(self._channel.stub.ApplyUpdate, request)
        return serde.update_result_from_proto(response)

    def discard_gradients(self) -> int:
        """Drop the accumulated gradients; returns how many batches were dropped."""
        request = pb.DiscardGradientsRequest(run=self._channel.run)
        response = self._channel.call(self._channel.stub.DiscardGradients, request)
        return int(response.discarded_batches)

    def evaluate(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        return_predictions: bool = False,
    ) -> EvaluationResult:
        """The model's loss (with targets) and predictions (when asked) for a batch, in
        evaluation mode; changes nothing on the server."""
        request = pb.EvaluateRequest(
            inputs=tensor_to_proto(inputs),
            return_predictions=return_predictions,
            run=self._channel.run,
        )
        if targets is not None:
            request.targets.CopyFrom(tensor_to_proto(targets))
        response = self._channel.call(self._channel.stub.Evaluate, request)
        return serde.evaluation_result_from_proto(response)

    def set_parameters(
        self,
        values: Mapping[str, torch.Tensor],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> int:
        """Replace parameter values; returns the new model version."""
        request = pb.SetParametersRequest(
            parameters=[tensor_to_proto(value, name) for name, value in values.items()],
            request_id=request_id or new_request_id(),
            run=self._channel.run,
        )
        if expected_version is not None:
            request.expected_version = expected_version
        response = self._channel.call(self._channel.stub.SetParameters, request)
        return int(response.model_version)

    def model_info(self) -> ModelInfo:
        """The run's model as the server describes it: spec, loss, optimizer, version and
        accumulated batches; the shapes and dtypes of inputs, targets, parameters and buffers;
        the losses a batch may name; the server's limits."""
        request = pb.GetModelInfoRequest(run=self._channel.run)
        response = self._channel.call(self._channel.stub.GetModelInfo, request)
        return serde.model_info_from_proto(response)

    def describe_graph(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        return_gradients: bool = False,
        max_nodes: int = 0,
    ) -> GraphDescription:
        """The autograd graph the server's forward pass records for this batch; changes nothing
        on the server. max_nodes 0 is the server's default cap (docs/graph.md)."""
        request = pb.DescribeGraphRequest(
            inputs=tensor_to_proto(inputs),
            targets=tensor_to_proto(targets),
            return_gradients=return_gradients,
            max_nodes=max_nodes,
            run=self._channel.run,
        )
        response = self._channel.call(self._channel.stub.DescribeGraph, request)
        return serde_graph.graph_description_from_proto(response)
