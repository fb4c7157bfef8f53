"""GradientClient: every gradserve.v1 RPC as a typed method over torch tensors.

The call groups are plain objects over one CallChannel, and each method hands its call to
one. Results are gradserve.types, re-exported here (`from ... import TrainStep` works).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Unpack

import torch

from gradserve.defaults import DEFAULT_MAX_MESSAGE_BYTES, SERVICE_NAME
from gradserve.graph_types import Graph, GraphDescription, GraphEdge, GraphNode, NodeKind
from gradserve.pass_types import DatasetPass, PassResult
from gradserve.run_types import (
    LoraRequest,
    RunDetails,
    RunSummary,
)
from gradserve.types import (
    DatasetBatch,
    EvaluationResult,
    GradientResult,
    LossSpec,
    ModelInfo,
    OutputsResult,
    Reduction,
    StepResult,
    TensorSpec,
    TrainStep,
    UpdateResult,
    WeightedReduction,
)

from .call_channel import CallChannel, ChannelSettings
from .custom_loss import CustomLosses, LossFn
from .dataset_calls import DatasetCalls
from .delegation import delegated
from .parameter_transfer import ParameterTransfer
from .retry import NO_RETRY, RetryPolicy, new_request_id
from .run_calls import RunCalls
from .sampling_calls import SamplingCalls
from .step_calls import StepCalls
from .train_calls import TrainCalls

# Re-exported, so that one import serves a caller: the policy, the defaults, and the types
# the methods take and return.
__all__ = ["NO_RETRY", "GradientClient", "RetryPolicy", "new_request_id"]
__all__ += ["DEFAULT_MAX_MESSAGE_BYTES", "SERVICE_NAME"]
__all__ += ["DatasetBatch", "DatasetPass", "EvaluationResult", "GradientResult", "ModelInfo"]
__all__ += ["PassResult", "Reduction", "RunDetails", "RunSummary", "StepResult"]
__all__ += ["TensorSpec", "TrainStep", "UpdateResult"]
__all__ += ["Graph", "GraphDescription", "GraphEdge", "GraphNode", "NodeKind"]


class GradientClient:
    """A connection to one gradserve server, bound to one run ("" is the default run).

    >>> with GradientClient("127.0.0.1:50051", run="mine") as client:
    ...     client.create_run("mine", model="linear")
    ...     client.compute_gradients(x, y)
    ...     client.apply_update(0.01)

    Every call names `run` (client/call_channel.py); calls that change the server carry a
    request_id, so a retry after UNAVAILABLE applies nothing twice. The call groups are
    attributes too: `steps`, `stream`, `losses`, `runs`, `datasets`, `parameters`, `sampling`, over
    the CallChannel `call_channel`.
    """

    def __init__(self, target: str, **settings: Unpack[ChannelSettings]) -> None:
        """`target` is HOST:PORT; `settings`: timeout (30 s each call), retry, max_message_bytes,
        credentials (TLS), metadata (the bearer token), channel (one of yours), run."""
        self._compose(CallChannel(target, **settings))

    def _compose(self, call_channel: CallChannel) -> None:
        self.call_channel = call_channel
        self.steps = StepCalls(call_channel)
        self.stream = TrainCalls(call_channel)
        self.losses = CustomLosses(call_channel)
        self.runs = RunCalls(call_channel)
        self.datasets = DatasetCalls(call_channel)
        self.parameters = ParameterTransfer(call_channel)
        self.sampling = SamplingCalls(call_channel)

    @property
    def target(self) -> str:
        """The server's address."""
        return self.call_channel.target

    @property
    def timeout(self) -> float:
        """Each call's deadline, in seconds."""
        return self.call_channel.timeout

    @property
    def retry(self) -> RetryPolicy:
        """How calls that are safe to repeat are retried after UNAVAILABLE."""
        return self.call_channel.retry

    @property
    def run(self) -> str:
        """The run every call names ("" is the default run)."""
        return self.call_channel.run

    def for_run(self, run: str) -> GradientClient:
        """A client for run `run` over this channel; closing it leaves the channel open."""
        other = copy.copy(self)
        other._compose(self.call_channel.for_run(run))
        return other

    def close(self) -> None:
        """Close the channel (a client made by `for_run` leaves it to the one it came from)."""
        self.call_channel.close()

    def __enter__(self) -> GradientClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Block until the server reports SERVING; UnavailableError after `timeout` seconds."""
        self.call_channel.wait_until_ready(timeout)

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
        """Add one batch's gradients to the run's accumulator (StepCalls.compute_gradients);
        `return_logprobs`: the targets' per-token log-probabilities too (token runs)."""
        return self.steps.compute_gradients(
            inputs,
            targets,
            request_id=request_id,
            return_gradients=return_gradients,
            based_on_version=based_on_version,
            loss=loss,
            sample_weights=sample_weights,
            weighted_reduction=weighted_reduction,
            seed=seed,
            return_logprobs=return_logprobs,
        )

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
        """One optimizer step with the accumulated gradients (StepCalls.apply_update)."""
        return self.steps.apply_update(
            learning_rate,
            reduction=reduction,
            expected_version=expected_version,
            request_id=request_id,
            hyperparameters=hyperparameters,
            max_grad_norm=max_grad_norm,
        )

    def discard_gradients(self) -> int:
        """Drop the accumulated gradients; returns how many batches were dropped."""
        return self.steps.discard_gradients()

    def evaluate(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        return_predictions: bool = False,
    ) -> EvaluationResult:
        """Loss and predictions for a batch in evaluation mode (StepCalls.evaluate)."""
        return self.steps.evaluate(inputs, targets, return_predictions=return_predictions)

    def set_parameters(
        self,
        values: Mapping[str, torch.Tensor],
        *,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> int:
        """Replace parameter values; returns the new model version."""
        return self.steps.set_parameters(
            values, expected_version=expected_version, request_id=request_id
        )

    def model_info(self) -> ModelInfo:
        """The run's model as the server describes it (StepCalls.model_info)."""
        return self.steps.model_info()

    def describe_graph(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        return_gradients: bool = False,
        max_nodes: int = 0,
    ) -> GraphDescription:
        """The autograd graph of this batch's forward pass (StepCalls.describe_graph)."""
        return self.steps.describe_graph(
            inputs, targets, return_gradients=return_gradients, max_nodes=max_nodes
        )

    def train_stream(
        self,
        requests: Iterable[Sequence[TrainStep] | DatasetPass],
        *,
        window: int = 8,
        timeout: float | None = None,
    ) -> Iterator[list[StepResult]]:
        """Groups of steps over one Train stream, `window` in flight (TrainCalls.train_stream)."""
        return self.stream.train_stream(requests, window=window, timeout=timeout)

    def train_pass(self, descriptor: DatasetPass, *, timeout: float | None = None) -> PassResult:
        """One dataset pass, its answer packed (TrainCalls.train_pass)."""
        return self.stream.train_pass(descriptor, timeout=timeout)

    def compute_outputs(
        self, inputs: torch.Tensor, *, request_id: str | None = None
    ) -> OutputsResult:
        """The model's outputs, kept under a handle (CustomLosses.compute_outputs)."""
        return self.losses.compute_outputs(inputs, request_id=request_id)

    def backward_outputs(
        self,
        handle: str,
        output_gradients: torch.Tensor,
        loss: float,
        *,
        request_id: str | None = None,
        based_on_version: int | None = None,
    ) -> GradientResult:
        """Backpropagate dL/d(outputs) through the pass `handle` names into .grad."""
        return self.losses.backward_outputs(
            handle,
            output_gradients,
            loss,
            request_id=request_id,
            based_on_version=based_on_version,
        )

    def compute_gradients_with(
        self,
        loss_fn: LossFn,
        inputs: torch.Tensor,
        *extra: Any,
        based_on_version: int | None = None,
    ) -> GradientResult:
        """Gradients of a loss computed here (CustomLosses.compute_gradients_with)."""
        return self.losses.compute_gradients_with(
            loss_fn, inputs, *extra, based_on_version=based_on_version
        )

    def create_run(
        self,
        run: str = "",
        *,
        model: str = "",
        loss: str | None = None,
        optimizer: str | None = None,
        seed: int | None = None,
        from_checkpoint: str | None = None,
        with_optimizer_state: bool = False,
        request_id: str | None = None,
        base_model: str = "",
        lora: LoraRequest | None = None,
    ) -> tuple[str, ModelInfo]:
        """Create run `run`, an adapter run, or fork a checkpoint (RunCalls.create_run)."""
        return self.runs.create_run(
            run,
            model=model,
            loss=loss,
            optimizer=optimizer,
            seed=seed,
            from_checkpoint=from_checkpoint,
            with_optimizer_state=with_optimizer_state,
            request_id=request_id,
            base_model=base_model,
            lora=lora,
        )

    # The call groups' methods that only pass their arguments on (client/delegation.py).
    list_runs = delegated("runs", RunCalls.list_runs)
    get_run = delegated("runs", RunCalls.get_run)
    delete_run = delegated("runs", RunCalls.delete_run)
    save_checkpoint = delegated("runs", RunCalls.save_checkpoint)
    list_checkpoints = delegated("runs", RunCalls.list_checkpoints)
    load_checkpoint = delegated("runs", RunCalls.load_checkpoint)
    delete_checkpoint = delegated("runs", RunCalls.delete_checkpoint)
    state_digest = delegated("runs", RunCalls.state_digest)
    sample_stream = delegated("sampling", SamplingCalls.sample_stream)
    sample = delegated("sampling", SamplingCalls.sample)
    upload_dataset = delegated("datasets", DatasetCalls.upload_dataset)
    list_datasets = delegated("datasets", DatasetCalls.list_datasets)
    delete_dataset = delegated("datasets", DatasetCalls.delete_dataset)
    get_parameters = delegated("parameters", ParameterTransfer.get_parameters)
    stream_parameters = delegated("parameters", ParameterTransfer.stream_parameters)
    upload_parameters = delegated("parameters", ParameterTransfer.upload_parameters)
