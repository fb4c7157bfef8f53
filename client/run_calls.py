"""GradientClient's calls that manage runs and their checkpoints (docs/runs.md).

Built over a CallChannel: create, list and delete runs; save, list, load and delete the
client's run's checkpoints; its state digest. Results are gradserve.types. Retries follow the
client's rule, only what is safe to repeat: CreateRun and LoadCheckpoint carry request ids;
DeleteRun, DeleteCheckpoint and a named SaveCheckpoint have none and are sent once (a retry
of one that had landed would answer NOT_FOUND or ALREADY_EXISTS for what succeeded).
"""

from __future__ import annotations

from gradserve import serde_runs
from gradserve.run_types import (
    CheckpointSummary,
    LoadResult,
    LoraRequest,
    RunDetails,
    RunRequest,
    RunSummary,
    SavedCheckpoint,
    StateDigest,
)
from gradserve.types import ModelInfo
from gradserve.v1 import gradserve_pb2 as pb

from .call_channel import CallChannel
from .retry import new_request_id


class RunCalls:
    """Runs and the checkpoints of the channel's run, over one CallChannel."""

    def __init__(self, channel: CallChannel) -> None:
        self._channel = channel

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
        """Create run `run` ("" lets the server name it); returns (its name, its ModelInfo).

        `model`: a model spec from the operator's registry (empty for a fork: the
        checkpoint's). `from_checkpoint`: "RUN/NAME" forks that checkpoint ("/NAME" is the
        default run's); `with_optimizer_state` carries the optimizer's state over too. Raises
        AlreadyExistsError when the name is taken; a retry under the same request_id is
        answered with the first answer instead. `base_model` and `lora`: an adapter run, a
        LoRA adapter over the operator's base of that name (docs/adapters.md)."""
        request = serde_runs.run_request_to_proto(
            RunRequest(
                run=run,
                model=model,
                loss=loss or "",
                optimizer=optimizer or "",
                seed=seed,
                from_checkpoint=from_checkpoint or "",
                with_optimizer_state=with_optimizer_state,
                request_id=request_id or new_request_id(),
                base_model=base_model,
                lora=lora,
            )
        )
        response = self._channel.call(self._channel.stub.CreateRun, request, run=run)
        return serde_runs.created_run_from_proto(response)

    def list_runs(self) -> list[RunSummary]:
        """The runs this caller may see, sorted by name."""
        response = self._channel.call(self._channel.stub.ListRuns, pb.ListRunsRequest())
        return [serde_runs.run_summary_from_proto(summary) for summary in response.runs]

    def get_run(self, run: str) -> RunDetails:
        """One run this caller may see: its summary, owner, base, checkpoints and datasets."""
        response = self._channel.call(self._channel.stub.GetRun, pb.GetRunRequest(run=run))
        return serde_runs.run_details_from_proto(response)

    def delete_run(self, run: str, *, delete_checkpoints: bool = False) -> int:
        """Delete run `run` (never the default run); returns the checkpoints deleted with it.
        Without delete_checkpoints they stay on disk."""
        request = pb.DeleteRunRequest(run=run, delete_checkpoints=delete_checkpoints)
        response = self._channel.call(self._channel.stub.DeleteRun, request, run=run, retry=False)
        return int(response.deleted_checkpoints)

    def save_checkpoint(self, name: str = "") -> SavedCheckpoint:
        """Checkpoint this client's run now, durably; `name` empty lets the server name it.
        Unnamed saves are retried (a repeat writes one more checkpoint, nothing else)."""
        request = pb.SaveCheckpointRequest(run=self._channel.run, name=name)
        response = self._channel.call(self._channel.stub.SaveCheckpoint, request, retry=not name)
        return serde_runs.saved_checkpoint_from_proto(response)

    def list_checkpoints(self) -> list[CheckpointSummary]:
        """This client's run's checkpoints, oldest first."""
        request = pb.ListCheckpointsRequest(run=self._channel.run)
        response = self._channel.call(self._channel.stub.ListCheckpoints, request)
        return [serde_runs.checkpoint_summary_from_proto(c) for c in response.checkpoints]

    def load_checkpoint(
        self, name: str, *, with_optimizer_state: bool = False, request_id: str | None = None
    ) -> LoadResult:
        """Load checkpoint `name` of this client's run into it (parameters and buffers, and
        the optimizer's state when asked); accumulated gradients are dropped and the version
        increases by one."""
        request = pb.LoadCheckpointRequest(
            run=self._channel.run,
            name=name,
            with_optimizer_state=with_optimizer_state,
            request_id=request_id or new_request_id(),
        )
        response = self._channel.call(self._channel.stub.LoadCheckpoint, request)
        return serde_runs.load_result_from_proto(response)

    def delete_checkpoint(self, name: str) -> None:
        """Delete checkpoint `name` of this client's run. Sent once (a repeat that had
        landed would answer NOT_FOUND)."""
        request = pb.DeleteCheckpointRequest(run=self._channel.run, name=name)
        self._channel.call(self._channel.stub.DeleteCheckpoint, request, retry=False)

    def state_digest(self) -> StateDigest:
        """The SHA-256 over this run's parameters, buffers, optimizer state and version."""
        request = pb.GetStateDigestRequest(run=self._channel.run)
        response = self._channel.call(self._channel.stub.GetStateDigest, request)
        return serde_runs.state_digest_from_proto(response)
