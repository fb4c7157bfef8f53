"""The RPCs that train and inspect a run's model: ComputeGradients, ApplyUpdate, Train,
Evaluate, DiscardGradients, DescribeGraph.

One of the handlers the servicer (servicer.py) delegates to: decode, one call to the run's
ServedRun, encode. Batches that name dataset samples are resolved by DatasetRpcs
(datasets.py); no torch arithmetic here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import grpc
import torch

from gradserve import serde, serde_graph
from gradserve.codec import tensor_from_proto, tensor_into_proto
from gradserve.errors import InvalidArgumentError
from gradserve.pass_types import PassResult
from gradserve.serde_datasets import dataset_batch_from_proto
from gradserve.serde_losses import batch_loss_from_proto
from gradserve.serde_parameters import discard_result_to_proto
from gradserve.serde_passes import pass_response_to_proto
from gradserve.types import DatasetBatch
from gradserve.v1 import gradserve_pb2 as pb

from ..store.shared_compute import BatchNote, batch_note_metadata
from .datasets import DatasetRpcs
from .runs import RunAccess


def _named_batch(request: pb.ComputeGradientsRequest) -> DatasetBatch | None:
    """The batch as dataset samples, when the request names them instead of sending them."""
    if not request.HasField("dataset"):
        return None
    if request.HasField("inputs") or request.HasField("targets"):
        raise InvalidArgumentError(
            "dataset: a batch is named by a dataset or sent (inputs and targets), not both",
            field="dataset",
        )
    return dataset_batch_from_proto(request.dataset, "dataset")


def optional(message: object, name: str) -> int | None:
    """An optional scalar field's value, None when it was not sent."""
    return getattr(message, name) if message.HasField(name) else None  # type: ignore[attr-defined]


class TrainingRpcs:
    def __init__(self, access: RunAccess, datasets: DatasetRpcs, max_elements: int) -> None:
        self._access = access
        self._datasets = datasets
        self._max_elements = max_elements

    def _batch(self, message: pb.Tensor, field: str) -> torch.Tensor:
        return tensor_from_proto(message, field, max_elements=self._max_elements)

    def ComputeGradients(
        self, request: pb.ComputeGradientsRequest, context: grpc.ServicerContext
    ) -> pb.ComputeGradientsResponse:
        if not context.is_active():
            # The caller is gone (cancelled, deadline passed) while the call queued: skip the work.
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled before it ran")
        named = _named_batch(request)
        if named is None:
            inputs = self._batch(request.inputs, "inputs")
            targets = self._batch(request.targets, "targets")
        notes: list[BatchNote] = []
        with self._access.use(request.run, context) as served:
            if named is not None:
                inputs, targets = self._datasets.batches(request.run, context)(named, "dataset")
            result = served.compute_gradients(
                inputs,
                targets,
                request_id=request.request_id,
                return_gradients=request.return_gradients,
                based_on_version=optional(request, "based_on_version"),
                batch_loss=batch_loss_from_proto(request, max_elements=self._max_elements),
                seed=optional(request, "seed"),
                return_logprobs=request.return_logprobs,
                on_batched=notes.append,
            )
        if notes:
            context.set_trailing_metadata(batch_note_metadata(notes[0]))
        response = serde.gradient_result_to_proto(result)
        if request.return_logprobs and result.logprobs is not None:
            tensor_into_proto(result.logprobs, response.logprobs)
        return response

    def ApplyUpdate(
        self, request: pb.ApplyUpdateRequest, context: grpc.ServicerContext
    ) -> pb.ApplyUpdateResponse:
        reduction = serde.reduction_from_proto(request.reduction)
        with self._access.use(request.run, context) as served:
            result = served.apply_update(
                request.learning_rate,
                reduction=reduction,
                expected_version=optional(request, "expected_version"),
                request_id=request.request_id,
                time_remaining=context.time_remaining(),
                hyperparameters=dict(request.hyperparameters),
                max_grad_norm=optional(request, "max_grad_norm"),
            )
        return serde.update_result_to_proto(result)

    def Evaluate(
        self, request: pb.EvaluateRequest, context: grpc.ServicerContext
    ) -> pb.EvaluateResponse:
        targets = self._batch(request.targets, "targets") if request.HasField("targets") else None
        inputs = self._batch(request.inputs, "inputs")
        with self._access.use(request.run, context) as served:
            if request.return_logprobs:
                result, logprobs = served.evaluate_logprobs(
                    inputs, targets, return_predictions=request.return_predictions
                )
                response = serde.evaluation_result_to_proto(result)
                tensor_into_proto(logprobs, response.logprobs)
                return response
            result = served.evaluate(inputs, targets, return_predictions=request.return_predictions)
        return serde.evaluation_result_to_proto(result)

    def DiscardGradients(
        self, request: pb.DiscardGradientsRequest, context: grpc.ServicerContext
    ) -> pb.DiscardGradientsResponse:
        with self._access.use(request.run, context) as served:
            result = served.discard_gradients()
        return discard_result_to_proto(result)

    def DescribeGraph(
        self, request: pb.DescribeGraphRequest, context: grpc.ServicerContext
    ) -> pb.DescribeGraphResponse:
        inputs = self._batch(request.inputs, "inputs")
        targets = self._batch(request.targets, "targets")
        with self._access.use(request.run, context) as served:
            result = served.describe_graph(
                inputs,
                targets,
                max_nodes=request.max_nodes,
                return_gradients=request.return_gradients,
            )
        return serde_graph.graph_description_to_proto(result)

    def Train(
        self, request_iterator: Iterator[pb.TrainRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.TrainResponse]:
        requests = iter(request_iterator)
        first = next(requests, None)
        if first is None:
            return
        # One run for the whole stream: it stays loaded while the stream is open.
        with self._access.use(first.run, context) as served:
            for request in itertools.chain([first], requests):
                if request.run != first.run:
                    raise InvalidArgumentError(
                        f"run: {request.run[:80]!r}, but this stream trains {first.run[:80]!r}",
                        field="run",
                    )
                if request.HasField("dataset_pass"):
                    expanded = self._datasets.dataset_pass(first.run, context, request)
                    result = served.train_pass(expanded, request_id=request.request_id)
                    clips = expanded.steps[0].max_grad_norm is not None
                    answer = PassResult.of(result, norms=expanded.gradient_norms, clips=clips)
                    yield pass_response_to_proto(answer, request.request_id)
                    continue
                resolve = self._datasets.batches(first.run, context)
                steps = [
                    serde.train_step_from_proto(
                        step, f"steps[{index}]", self._max_elements, resolve
                    )
                    for index, step in enumerate(request.steps)
                ]
                result = served.train(steps, request_id=request.request_id)
                yield serde.train_result_to_proto(result, request.request_id)
