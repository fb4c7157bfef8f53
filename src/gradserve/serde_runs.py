"""serde for runs and their checkpoints: paired x_to_proto / x_from_proto, as in serde.py.

Kept beside serde.py (which holds the tensor-carrying types) so that neither module grows past
a screenful of pairs; the same rule holds: every field both ways, tested by round trips in
tests/test_serde.py.
"""

from __future__ import annotations

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
from gradserve.serde import model_info_from_proto, model_info_to_proto
from gradserve.types import ModelInfo
from gradserve.v1 import gradserve_pb2 as pb


def run_request_to_proto(request: RunRequest) -> pb.CreateRunRequest:
    message = pb.CreateRunRequest(
        run=request.run,
        model=request.model,
        loss=request.loss,
        optimizer=request.optimizer,
        from_checkpoint=request.from_checkpoint,
        with_optimizer_state=request.with_optimizer_state,
        request_id=request.request_id,
    )
    if request.seed is not None:
        message.seed = request.seed
    message.base_model = request.base_model
    if request.lora is not None:
        message.lora.CopyFrom(
            pb.LoraSpec(
                rank=request.lora.rank,
                alpha=request.lora.alpha,
                target_modules=request.lora.target_modules,
                dropout=request.lora.dropout,
            )
        )
    return message


def run_request_from_proto(message: pb.CreateRunRequest) -> RunRequest:
    return RunRequest(
        run=message.run,
        model=message.model,
        loss=message.loss,
        optimizer=message.optimizer,
        seed=message.seed if message.HasField("seed") else None,
        from_checkpoint=message.from_checkpoint,
        with_optimizer_state=message.with_optimizer_state,
        request_id=message.request_id,
        base_model=message.base_model,
        lora=(
            LoraRequest(
                rank=message.lora.rank,
                alpha=message.lora.alpha,
                target_modules=tuple(message.lora.target_modules),
                dropout=message.lora.dropout,
            )
            if message.HasField("lora")
            else None
        ),
    )


def created_run_to_proto(run: str, info: ModelInfo) -> pb.CreateRunResponse:
    return pb.CreateRunResponse(run=run, info=model_info_to_proto(info))


def created_run_from_proto(message: pb.CreateRunResponse) -> tuple[str, ModelInfo]:
    return message.run, model_info_from_proto(message.info)


def run_summary_to_proto(summary: RunSummary) -> pb.RunSummary:
    return pb.RunSummary(
        run=summary.run,
        model_spec=summary.model_spec,
        optimizer=summary.optimizer,
        model_version=summary.model_version,
        loaded=summary.loaded,
        parameter_bytes=summary.parameter_bytes,
        base_model=summary.base_model,
        base_model_digest=summary.base_model_digest,
        owner=summary.owner,
    )


def run_summary_from_proto(message: pb.RunSummary) -> RunSummary:
    return RunSummary(
        run=message.run,
        model_spec=message.model_spec,
        optimizer=message.optimizer,
        model_version=message.model_version,
        loaded=message.loaded,
        parameter_bytes=message.parameter_bytes,
        base_model=message.base_model,
        base_model_digest=message.base_model_digest,
        owner=message.owner,
    )


def run_details_to_proto(details: RunDetails) -> pb.GetRunResponse:
    return pb.GetRunResponse(
        summary=run_summary_to_proto(details.summary),
        owner=details.owner,
        base_model=details.base_model,
        checkpoints=details.checkpoints,
        datasets=details.datasets,
        dataset_bytes=details.dataset_bytes,
        loss=details.loss,
    )


def run_details_from_proto(message: pb.GetRunResponse) -> RunDetails:
    return RunDetails(
        summary=run_summary_from_proto(message.summary),
        owner=message.owner,
        base_model=message.base_model,
        checkpoints=message.checkpoints,
        datasets=message.datasets,
        dataset_bytes=message.dataset_bytes,
        loss=message.loss,
    )


def saved_checkpoint_to_proto(saved: SavedCheckpoint) -> pb.SaveCheckpointResponse:
    return pb.SaveCheckpointResponse(
        name=saved.name,
        model_version=saved.model_version,
        accumulated_batches=saved.accumulated_batches,
        digest=saved.digest,
    )


def saved_checkpoint_from_proto(message: pb.SaveCheckpointResponse) -> SavedCheckpoint:
    return SavedCheckpoint(
        name=message.name,
        model_version=message.model_version,
        accumulated_batches=message.accumulated_batches,
        digest=message.digest,
    )


def checkpoint_summary_to_proto(summary: CheckpointSummary) -> pb.CheckpointSummary:
    return pb.CheckpointSummary(
        name=summary.name,
        model_version=summary.model_version,
        accumulated_batches=summary.accumulated_batches,
        digest=summary.digest,
        saved_at=summary.saved_at,
    )


def checkpoint_summary_from_proto(message: pb.CheckpointSummary) -> CheckpointSummary:
    return CheckpointSummary(
        name=message.name,
        model_version=message.model_version,
        accumulated_batches=message.accumulated_batches,
        digest=message.digest,
        saved_at=message.saved_at,
    )


def load_result_to_proto(result: LoadResult) -> pb.LoadCheckpointResponse:
    return pb.LoadCheckpointResponse(
        model_version=result.model_version,
        checkpoint_version=result.checkpoint_version,
        restored_parameters=result.restored_parameters,
        restored_buffers=result.restored_buffers,
        restored_optimizer_state=result.restored_optimizer_state,
        discarded_batches=result.discarded_batches,
        digest=result.digest,
    )


def deleted_run_to_proto(deleted_checkpoints: int) -> pb.DeleteRunResponse:
    return pb.DeleteRunResponse(deleted_checkpoints=deleted_checkpoints)


def deleted_checkpoint_to_proto() -> pb.DeleteCheckpointResponse:
    return pb.DeleteCheckpointResponse()


def checkpoints_to_proto(listed: list[CheckpointSummary]) -> pb.ListCheckpointsResponse:
    return pb.ListCheckpointsResponse(checkpoints=[checkpoint_summary_to_proto(c) for c in listed])


def runs_to_proto(listed: list[RunSummary]) -> pb.ListRunsResponse:
    return pb.ListRunsResponse(runs=[run_summary_to_proto(summary) for summary in listed])


def load_result_from_proto(message: pb.LoadCheckpointResponse) -> LoadResult:
    return LoadResult(
        model_version=message.model_version,
        checkpoint_version=message.checkpoint_version,
        restored_parameters=message.restored_parameters,
        restored_buffers=message.restored_buffers,
        restored_optimizer_state=message.restored_optimizer_state,
        discarded_batches=message.discarded_batches,
        digest=message.digest,
    )


def state_digest_to_proto(digest: StateDigest) -> pb.GetStateDigestResponse:
    return pb.GetStateDigestResponse(digest=digest.digest, model_version=digest.model_version)


def state_digest_from_proto(message: pb.GetStateDigestResponse) -> StateDigest:
    return StateDigest(digest=message.digest, model_version=message.model_version)
