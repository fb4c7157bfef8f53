"""GradientClient: every gradserve.v1 RPC as a typed method over torch tensors.

The call groups are plain objects over one CallChannel, and each method hands its call to
one. Results are gradserve.types, re-exported here (`from ... import TrainStep` works).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Unpack

import torch

from gradserve.chunks import DEFAULT_CHUNK_BYTES
from gradserve.defaults import DEFAULT_MAX_MESSAGE_BYTES, SERVICE_NAME
from gradserve.graph_types import Graph, GraphDescription, GraphEdge, GraphNode, NodeKind
from gradserve.pass_types import DatasetPass, PassResult
from gradserve.run_types import (
    CheckpointSummary,
    LoadResult,
    LoraRequest,
    RunDetails,
    RunSummary,
    SavedCheckpoint,
    StateDigest,
)
from gradserve.sampling_types import SampleResult, SampleStreamItem, SamplingParams
from gradserve.types import (
    DatasetBatch,
    DatasetSummary,
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
    ) -> GradientResult:
        """Add one batch's gradients to the run's accumulator (StepCalls.compute_gradients)."""
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

    def list_runs(self) -> list[RunSummary]:
        """The runs this caller may see, sorted by name."""
        return self.runs.list_runs()

    def sample_stream(
        self, prompt_tokens: Sequence[int], params: SamplingParams, *, checkpoint: str = ""
    ) -> Iterator[SampleStreamItem]:
        """(model version, event) per step as the server samples (SamplingCalls.sample_stream)."""
        return self.sampling.sample_stream(prompt_tokens, params, checkpoint=checkpoint)

    def sample(
        self, prompt_tokens: Sequence[int], params: SamplingParams, *, checkpoint: str = ""
    ) -> SampleResult:
        """Every sample of one prompt, whole, and the version drawn from (docs/sampling.md)."""
        return self.sampling.sample(prompt_tokens, params, checkpoint=checkpoint)

    def get_run(self, run: str) -> RunDetails:
        """One run this caller may see: its summary, owner, base, checkpoints and datasets."""
        return self.runs.get_run(run)

    def delete_run(self, run: str, *, delete_checkpoints: bool = False) -> int:
        """Delete run `run`; the checkpoints deleted with it (RunCalls.delete_run)."""
        return self.runs.delete_run(run, delete_checkpoints=delete_checkpoints)

    def save_checkpoint(self, name: str = "") -> SavedCheckpoint:
        """Checkpoint this client's run now, durably (RunCalls.save_checkpoint)."""
        return self.runs.save_checkpoint(name)

    def list_checkpoints(self) -> list[CheckpointSummary]:
        """This client's run's checkpoints, oldest first."""
        return self.runs.list_checkpoints()

    def load_checkpoint(
        self, name: str, *, with_optimizer_state: bool = False, request_id: str | None = None
    ) -> LoadResult:
        """Load a checkpoint of this client's run into it (RunCalls.load_checkpoint)."""
        return self.runs.load_checkpoint(
            name, with_optimizer_state=with_optimizer_state, request_id=request_id
        )

    def delete_checkpoint(self, name: str) -> None:
        """Delete checkpoint `name` of this client's run (RunCalls.delete_checkpoint)."""
        self.runs.delete_checkpoint(name)

    def state_digest(self) -> StateDigest:
        """The SHA-256 over this run's parameters, buffers, optimizer state and version."""
        return self.runs.state_digest()

    def upload_dataset(
        self,
        name: str,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        replace: bool = False,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> DatasetSummary:
        """Keep a dataset on the server for this run (DatasetCalls.upload_dataset)."""
        return self.datasets.upload_dataset(
            name, inputs, targets, replace=replace, chunk_bytes=chunk_bytes
        )

    def list_datasets(self) -> tuple[list[DatasetSummary], int]:
        """(the run's datasets by name, bytes of datasets the server can take now)."""
        return self.datasets.list_datasets()

    def delete_dataset(self, name: str) -> int:
        """Drop a dataset of the run; the bytes released (DatasetCalls.delete_dataset)."""
        return self.datasets.delete_dataset(name)

    def get_parameters(
        self, names: Iterable[str] = (), *, include_buffers: bool = False
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """(model_version, {name: value}) (ParameterTransfer.get_parameters)."""
        return self.parameters.get_parameters(names, include_buffers=include_buffers)

    def stream_parameters(
        self, names: Iterable[str] = (), *, chunk_bytes: int = 0, include_buffers: bool = False
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """GetParameters in chunks: no message-size limit applies to the model's size."""
        return self.parameters.stream_parameters(
            names, chunk_bytes=chunk_bytes, include_buffers=include_buffers
        )

    def upload_parameters(
        self,
        values: Mapping[str, torch.Tensor],
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> int:
        """SetParameters in chunks, for models past the message limit; returns the version."""
        return self.parameters.upload_parameters(
            values,
            chunk_bytes=chunk_bytes,
            expected_version=expected_version,
            request_id=request_id,
        )
