"""GradientClient: every gradserve.v1 RPC as a typed method over torch tensors.

Every call has a deadline. Calls that change the server carry a request_id (one is made when
the caller gives none), so retrying them after UNAVAILABLE is safe: the server answers a
repeated id with the first answer and applies nothing twice. Errors leave as GradserveError.
Results are gradserve.types, decoded by gradserve.serde; they are re-exported here so that
`from gradserve.client.gradient_client import GradientClient, TrainStep, ModelInfo` works.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence

import grpc
import torch

from gradserve import serde, serde_graph
from gradserve.codec import tensor_into_proto, tensor_to_proto
from gradserve.defaults import DEFAULT_MAX_MESSAGE_BYTES, SERVICE_NAME
from gradserve.errors import UnavailableError
from gradserve.graph_types import Graph, GraphDescription, GraphEdge, GraphNode, NodeKind
from gradserve.pass_types import DatasetPass, PassResult
from gradserve.serde_datasets import dataset_batch_into_proto
from gradserve.serde_losses import batch_loss, batch_loss_into_proto
from gradserve.serde_passes import dataset_pass_into_proto, pass_result_from_proto
from gradserve.types import (
    DatasetBatch,
    EvaluationResult,
    GradientResult,
    LossSpec,
    ModelInfo,
    Reduction,
    RunSummary,
    StepResult,
    TensorSpec,
    TrainStep,
    UpdateResult,
    WeightedReduction,
)
from gradserve.v1 import gradserve_pb2 as pb

from .custom_loss import CustomLosses
from .dataset_calls import DatasetCalls
from .errors import error_from_rpc
from .parameter_transfer import ParameterTransfer
from .retry import NO_RETRY, RetryPolicy, new_request_id
from .run_calls import RunCalls

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "NO_RETRY",
    "SERVICE_NAME",
    "DatasetBatch",
    "DatasetPass",
    "EvaluationResult",
    "GradientClient",
    "GradientResult",
    "Graph",
    "GraphDescription",
    "GraphEdge",
    "GraphNode",
    "ModelInfo",
    "NodeKind",
    "PassResult",
    "Reduction",
    "RetryPolicy",
    "RunSummary",
    "StepResult",
    "TensorSpec",
    "TrainStep",
    "UpdateResult",
    "new_request_id",
]


class GradientClient(CustomLosses, RunCalls, DatasetCalls, ParameterTransfer):
    """A connection to one gradserve server, bound to one run ("" is the default run).

    >>> with GradientClient("127.0.0.1:50051", run="mine") as client:
    ...     client.create_run("mine", model="linear")
    ...     client.compute_gradients(x, y)
    ...     client.apply_update(0.01)

    Every request that has a `run` field carries `run`; every call also carries it as the
    `gradserve-run` metadata, except for the default run (client/client_base.py says why).
    The server refuses a call whose metadata and body name different runs.
    """

    # -- the RPCs ------------------------------------------------------------------------

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
    ) -> GradientResult:
        """`based_on_version`: the model version this batch was prepared against (the server's
        async mode bounds the staleness; docs/scaling.md). `loss` (a name or LossSpec),
        `sample_weights` [N], `weighted_reduction`: this batch's own loss, docs/losses.md.
        `inputs` a DatasetBatch (and no targets): samples of a dataset uploaded to the run."""
        request = pb.ComputeGradientsRequest(
            request_id=request_id or new_request_id(),
            return_gradients=return_gradients,
            run=self.run,
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
        response = self._call(self._stub.ComputeGradients, request)
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
            run=self.run,
            expected_version=expected_version,
            hyperparameters=hyperparameters,
            max_grad_norm=max_grad_norm,
        )
        return serde.update_result_from_proto(self._call(self._stub.ApplyUpdate, request))

    def evaluate(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        return_predictions: bool = False,
    ) -> EvaluationResult:
        request = pb.EvaluateRequest(
            inputs=tensor_to_proto(inputs), return_predictions=return_predictions, run=self.run
        )
        if targets is not None:
            request.targets.CopyFrom(tensor_to_proto(targets))
        response = self._call(self._stub.Evaluate, request)
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
            run=self.run,
        )
        if expected_version is not None:
            request.expected_version = expected_version
        return int(self._call(self._stub.SetParameters, request).model_version)

    def model_info(self) -> ModelInfo:
        response = self._call(self._stub.GetModelInfo, pb.GetModelInfoRequest(run=self.run))
        return serde.model_info_from_proto(response)

    def discard_gradients(self) -> int:
        """Drop the accumulated gradients; returns how many batches were dropped."""
        response = self._call(self._stub.DiscardGradients, pb.DiscardGradientsRequest(run=self.run))
        return int(response.discarded_batches)

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
            run=self.run,
        )
        response = self._call(self._stub.DescribeGraph, request)
        return serde_graph.graph_description_from_proto(response)

    # -- streams -------------------------------------------------------------------------

    def train_stream(
        self,
        requests: Iterable[Sequence[TrainStep] | DatasetPass],
        *,
        window: int = 8,
        timeout: float | None = None,
    ) -> Iterator[list[StepResult]]:
        """Run groups of steps over one Train stream, at most `window` groups in flight.

        Yields each group's results in order. The same arithmetic as the unary calls, with one
        round trip per group instead of two per step. A group may be a DatasetPass (steps over
        an uploaded dataset named in one message, docs/datasets.md): its answer comes as the
        results of the equivalent steps. `timeout` bounds the whole stream (default: the
        client's timeout per group of the window, at least an hour)."""
        for response in self._train_responses(requests, window, timeout):
            if response.HasField("pass_result"):
                yield pass_result_from_proto(response.pass_result).step_results()
            else:
                yield [serde.step_result_from_proto(result) for result in response.steps]

    def train_pass(self, descriptor: DatasetPass, *, timeout: float | None = None) -> PassResult:
        """One dataset pass, its answer packed (per-step losses; norms when asked)."""
        # Read to the stream's end: leaving early would cancel it under the server.
        answers = list(self._train_responses([descriptor], 1, timeout or self.timeout))
        if not answers:
            raise UnavailableError("Train: the stream ended without an answer")
        return pass_result_from_proto(answers[0].pass_result)

    def _train_responses(
        self,
        requests: Iterable[Sequence[TrainStep] | DatasetPass],
        window: int,
        timeout: float | None,
    ) -> Iterator[pb.TrainResponse]:
        slots = threading.Semaphore(window)
        finished = threading.Event()
        # gRPC reads `requests` on a thread of its own and turns what it raises into UNKNOWN
        # "Exception iterating requests!": keep the caller's error and raise it here instead.
        failures: list[Exception] = []

        def caught(
            steps_iterable: Iterable[Sequence[TrainStep] | DatasetPass],
        ) -> Iterator[Sequence[TrainStep] | DatasetPass]:
            try:
                yield from steps_iterable
            except Exception as error:  # the caller's own (bad data, say): half-close, re-raise
                failures.append(error)

        def gated() -> Iterator[pb.TrainRequest]:
            for steps in caught(requests):
                # Wait for a free slot; stop feeding once the consumer is gone.
                while not slots.acquire(timeout=0.1):
                    if finished.is_set():
                        return
                if finished.is_set():
                    return
                request = pb.TrainRequest(request_id=new_request_id(), run=self.run)
                if isinstance(steps, DatasetPass):
                    dataset_pass_into_proto(steps, request.dataset_pass)
                else:
                    request.steps.extend(serde.train_step_to_proto(step) for step in steps)
                yield request

        call = self._stub.Train(
            gated(), timeout=timeout or max(3600.0, self.timeout), metadata=self._metadata
        )
        try:
            for response in call:
                slots.release()
                yield response
        except grpc.RpcError as error:
            if failures:
                raise failures[0] from None
            raise error_from_rpc(error) from None
        finally:
            finished.set()
            call.cancel()
        if failures:
            raise failures[0]
