"""One run as the servicer serves it: every run-scoped RPC is one call on its ServedRun.

A ServedRun stands between the servicer and the run's ParameterStore (training, parameters,
outputs, digests), its checkpoint folder and its datasets, and records each call's result in
the metrics, once. How updates are coordinated among workers is the UpdatePolicy it holds
(update_policy.py: direct; sync.py; asynchronous.py), picked by CoordinationConfig.mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TypeVar

import torch

from gradserve.errors import FailedPreconditionError, InvalidArgumentError
from gradserve.graph_types import GraphDescription
from gradserve.run_types import CheckpointSummary, LoadResult, SavedCheckpoint, StateDigest
from gradserve.sampling_types import SamplingEvent, SamplingParams
from gradserve.types import (
    BatchLoss,
    DatasetSummary,
    DatasetUploadHeader,
    DiscardResult,
    EvaluationResult,
    GradientResult,
    ModelInfo,
    OutputsResult,
    Reduction,
    SetResult,
    TrainResult,
    TrainStep,
    UpdateResult,
)

from ..checkpoints.checks import ModelLayout
from ..checkpoints.durability import GroupCommit
from ..checkpoints.files import Checkpointer, read_for_load
from ..checkpoints.names import summaries
from ..config import CoordinationConfig, LimitsConfig, SamplingLimits
from ..datasets.registry import DatasetRegistry
from ..datasets.uploads import upload_dataset
from ..metrics import RunMetrics, ServerMetrics
from ..models.hyperparameters import NO_OVERRIDES, Hyperparameters
from ..models.losses import logprobs_choice
from ..store.output_handles import HandleBounds
from ..store.parameter_store import ParameterStore
from ..store.pass_runs import PassSteps
from ..store.shared_compute import OnBatched
from ..store.store_state import StoreState
from . import run_sampling
from .asynchronous import AsyncUpdates
from .sync import SyncUpdates
from .update_policy import DirectUpdates, UpdateCall, UpdatePolicy

T = TypeVar("T")


def update_policy(
    store: ParameterStore, config: CoordinationConfig, metrics: RunMetrics, limits: LimitsConfig
) -> UpdatePolicy:
    if config.mode == "sync":
        return SyncUpdates(store, config, metrics, limits)
    if config.mode == "async":
        return AsyncUpdates(store, config, metrics)
    return DirectUpdates(store, metrics)


class ServedRun:
    """A run's store, checkpoints and update policy behind one object per run."""

    def __init__(
        self,
        store: ParameterStore,
        metrics: RunMetrics | None = None,
        limits: LimitsConfig | None = None,
        coordination: CoordinationConfig | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics if metrics is not None else ServerMetrics().for_run("", store)
        self.limits = limits if limits is not None else LimitsConfig()
        self.policy = update_policy(
            store, coordination or CoordinationConfig(), self.metrics, self.limits
        )
        # The run's checkpoint folder (None without --checkpoint-dir).
        self.checkpointer: Checkpointer | None = None
        # --durability sync (server/checkpoints/durability.py): changes wait for their checkpoint.
        self.durability: GroupCommit | None = None

    def release(self) -> None:
        """The run is unloaded or deleted: its durability waiters end, its base's batches
        stop waiting for it."""
        if self.durability is not None:
            self.durability.close()
        if self.store.shared_compute is not None:
            self.store.shared_compute.leave()

    def durable(self, result: T) -> T:
        """`result` once the change behind it is on disk (a no-op unless --durability sync).
        Called after the store's lock is released, so waiters share one save."""
        if self.durability is not None:
            self.durability.wait_durable()
        return result

    # -- training ------------------------------------------------------------------------

    def compute_gradients(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        request_id: str = "",
        return_gradients: bool = False,
        based_on_version: int | None = None,
        batch_loss: BatchLoss | None = None,
        seed: int | None = None,
        return_logprobs: bool = False,
        on_batched: OnBatched | None = None,
    ) -> GradientResult:
        """`on_batched`: told how the batch ran when it shared a cross-run batch."""
        if return_logprobs:  # answered by a token loss (GradientResult.logprobs)
            batch_loss = logprobs_choice(self.store.model, batch_loss)
        seen: list[float] = []
        result = self.store.compute_gradients(
            inputs,
            targets,
            request_id=request_id,
            return_gradients=return_gradients,
            weigh=self.policy.weigher(based_on_version, seen),
            max_response_bytes=self.limits.max_message_bytes,
            batch_loss=batch_loss,
            seed=seed,
            on_batched=on_batched,
        )
        return self._recorded(result, seen)

    def compute_outputs(self, inputs: torch.Tensor, *, request_id: str = "") -> OutputsResult:
        bounds = HandleBounds.of(self.limits)
        return self.store.compute_outputs(inputs, request_id=request_id, bounds=bounds)

    def backward_outputs(
        self,
        handle: str,
        output_gradients: torch.Tensor,
        loss: float,
        *,
        request_id: str = "",
        based_on_version: int | None = None,
    ) -> GradientResult:
        """A contribution like a ComputeGradients batch (sync rounds count it as one; async
        staleness is measured when the backward pass runs)."""
        seen: list[float] = []
        result = self.store.backward_outputs(
            handle,
            output_gradients,
            loss,
            request_id=request_id,
            weigh=self.policy.weigher(based_on_version, seen),
        )
        return self._recorded(result, seen)

    def _recorded(self, result: GradientResult, seen: list[float]) -> GradientResult:
        self.metrics.record_gradients(result)
        if seen:
            staleness, weight = seen
            self.metrics.staleness.observe(staleness)
            if weight != 1.0:
                self.metrics.stale_contributions.labels("downweighted").inc()
        return result

    def apply_update(
        self,
        learning_rate: float,
        *,
        reduction: Reduction = Reduction.SUM,
        expected_version: int | None = None,
        request_id: str = "",
        time_remaining: float | None = None,
        hyperparameters: Hyperparameters = NO_OVERRIDES,
        max_grad_norm: float | None = None,
    ) -> UpdateResult:
        call = UpdateCall(
            learning_rate,
            reduction,
            expected_version,
            request_id,
            time_remaining,
            hyperparameters,
            max_grad_norm,
        )
        return self.durable(self.policy.apply(call))

    def train(self, steps: Sequence[TrainStep], *, request_id: str = "") -> TrainResult:
        self.policy.check_streamed()
        result = self.store.train(steps, request_id=request_id)
        samples = sum(int(inputs.shape[0]) for step in steps for inputs, _ in step.batches)
        self.metrics.record_train(result, samples)
        return self.durable(result) if any(step.applied for step in result.steps) else result

    def train_pass(self, expanded: PassSteps, *, request_id: str = "") -> TrainResult:
        """A dataset pass (server/store/pass_runs.py), recorded as the same steps would be."""
        self.policy.check_streamed()
        # As train() checks its steps' seeds: one rank's generator cannot seed the others'.
        self.store.local_only("dataset_pass.seed", when=expanded.steps[0].seed is not None)
        result = self.store.train_pass(expanded, request_id=request_id)
        samples = sum(int(step.batches[0][0].shape[0]) for step in expanded.steps)
        norms = expanded.gradient_norms or expanded.steps[0].max_grad_norm is not None
        self.metrics.record_pass(result, samples, norms=norms)
        return self.durable(result) if result.steps else result

    def evaluate(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None,
        *,
        return_predictions: bool = False,
    ) -> EvaluationResult:
        return self.store.evaluate(inputs, targets, return_predictions=return_predictions)

    def evaluate_logprobs(
        self, inputs: torch.Tensor, targets: torch.Tensor | None, *, return_predictions: bool
    ) -> tuple[EvaluationResult, torch.Tensor]:
        """Evaluate, with the targets' per-token log-probabilities [B, T] (token models)."""
        if not self.store.model.tokens:
            raise InvalidArgumentError(
                "return_logprobs: only adapter runs over a language model answer per-token "
                "log-probabilities",
                field="return_logprobs",
            )
        if targets is None:
            raise InvalidArgumentError(
                "targets: return_logprobs needs the targets", field="targets"
            )
        result = self.store.evaluate(
            inputs, targets, return_predictions=return_predictions, return_logprobs=True
        )
        assert result.logprobs is not None  # asked for, with targets
        return result, result.logprobs

    def discard_gradients(self) -> DiscardResult:
        return self.store.discard_gradients()

    def describe_graph(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        max_nodes: int = 0,
        return_gradients: bool = False,
    ) -> GraphDescription:
        return self.store.describe_graph(
            inputs, targets, max_nodes=max_nodes, return_gradients=return_gradients
        )

    # -- parameters ----------------------------------------------------------------------

    def info(self) -> ModelInfo:
        """The store's model info with the server's limits."""
        return dataclasses.replace(
            self.store.info(),
            max_batch_elements=self.limits.max_batch_elements,
            max_message_bytes=self.limits.max_message_bytes,
        )

    def read_parameters(
        self,
        names: Sequence[str],
        reader: Callable[[str, torch.Tensor], T],
        *,
        max_bytes: int | None = None,
        include_buffers: bool = False,
    ) -> tuple[int, list[T]]:
        return self.store.read_parameters(
            names, reader, max_bytes=max_bytes, include_buffers=include_buffers
        )

    def encode_parameters(
        self,
        names: Sequence[str],
        encode: Callable[[list[tuple[str, torch.Tensor]], int], T],
        *,
        max_bytes: int | None = None,
        include_buffers: bool = False,
    ) -> T:
        return self.store.encode_parameters(
            names, encode, max_bytes=max_bytes, include_buffers=include_buffers
        )

    def snapshot_parameters(
        self, names: Sequence[str], *, include_buffers: bool = False
    ) -> tuple[int, list[tuple[str, torch.Tensor]]]:
        return self.store.snapshot_parameters(names, include_buffers=include_buffers)

    def set_parameters(
        self,
        values: Sequence[tuple[str, torch.Tensor]],
        *,
        expected_version: int | None = None,
        request_id: str = "",
        method: str = "SetParameters",
        values_digest: str | None = None,
    ) -> SetResult:
        """`method`: the RPC that carried the values (SetParameters or UploadParameters);
        `values_digest`: see ParameterStore.set_parameters."""
        result = self.store.set_parameters(
            values,
            expected_version=expected_version,
            request_id=request_id,
            values_digest=values_digest,
        )
        self.metrics.record_set(result, method)
        return self.durable(result)

    def state_digest(self) -> StateDigest:
        digest, version = self.store.state_digest()
        return StateDigest(digest, version)

    # -- checkpoints and datasets --------------------------------------------------------

    def _checkpoints(self) -> Checkpointer:
        if self.checkpointer is None:
            raise FailedPreconditionError(
                "this server has no checkpoint directory (--checkpoint-dir)",
                field="checkpoint_dir",
                reason="NO_CHECKPOINT_DIRECTORY",
            )
        return self.checkpointer

    def save_checkpoint(self, name: str) -> SavedCheckpoint:
        saved = self._checkpoints().save(name)
        return SavedCheckpoint(
            saved.name, saved.model_version, saved.accumulated_batches, saved.digest
        )

    def list_checkpoints(self) -> list[CheckpointSummary]:
        return summaries(self.checkpointer.directory) if self.checkpointer is not None else []

    def load_checkpoint(
        self, name: str, *, with_optimizer_state: bool, request_id: str = ""
    ) -> LoadResult:
        checkpointer = self._checkpoints()
        layout = ModelLayout.of(self.store)

        def read() -> StoreState:
            # Under the store's lock, and only when the request id is new.
            return read_for_load(checkpointer.find(name).path, layout, "name")

        result = self.store.load_checkpoint(
            read,
            with_optimizer_state=with_optimizer_state,
            request_id=request_id,
            payload=(name,),
        )
        return self.durable(result)

    def delete_checkpoint(self, name: str) -> None:
        self._checkpoints().delete(name)

    def upload_dataset(
        self,
        header: DatasetUploadHeader,
        data: Iterator[bytes],
        datasets: DatasetRegistry,
        owner: Hashable,
    ) -> DatasetSummary:
        """A dataset checked against this run's model, kept in `datasets` for `owner`."""
        uploaded = upload_dataset(header, data, self.store.model, datasets, owner)
        return uploaded.dataset.summary(uploaded.unchanged, uploaded.replaced)

    # -- sampling (docs/sampling.md; the work is in run_sampling.py) --------------------------

    def check_sample(
        self, prompt: Sequence[int], params: SamplingParams, limits: SamplingLimits, checkpoint: str
    ) -> int:
        """Refuse a request this run cannot serve or that is over a limit, naming the field;
        answer the bytes it holds while it runs."""
        return run_sampling.request_bytes(self.store, prompt, params, limits, checkpoint)

    def sample(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        cancelled: Callable[[], bool],
        checkpoint: str = "",
    ) -> tuple[int, Iterator[SamplingEvent]]:
        """(the version sampled, the engine's events) over a copy of the weights taken now, or
        of the run's checkpoint `checkpoint`: training may step meanwhile."""
        return run_sampling.sample_run(
            self.store,
            self.checkpointer,
            prompt,
            params,
            cancelled=cancelled,
            checkpoint=checkpoint,
        )
