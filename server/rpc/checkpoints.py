"""The RPCs of a run's checkpoints: save (named or not), list, load, delete, and the state
digest that proves what a run holds.

Part of the GradientService servicer (servicer.py inherits it, beside RunRpcs): decode, one
call to the run's checkpointer or store, encode. A run's checkpoints live in its checkpoint
folder (server/checkpoints/names.py names them); the digest is server/store/state_digest.py's.
"""

from __future__ import annotations

import grpc

from gradserve import serde_runs
from gradserve.errors import FailedPreconditionError, InvalidArgumentError
from gradserve.v1 import gradserve_pb2 as pb

from ..checkpoints.checks import ModelLayout
from ..checkpoints.files import Checkpointer, read_for_load
from ..checkpoints.names import check_checkpoint_name, summaries
from ..store.store_state import StoreState
from .runs import RunRpcs


def _needed(checkpointer: Checkpointer | None) -> Checkpointer:
    if checkpointer is None:
        raise FailedPreconditionError(
            "this server has no checkpoint directory (--checkpoint-dir)",
            field="checkpoint_dir",
            reason="NO_CHECKPOINT_DIRECTORY",
        )
    return checkpointer


def _lookup_name(name: str) -> None:
    if not name:
        raise InvalidArgumentError("name: a checkpoint name is needed", field="name")
    check_checkpoint_name(name, new=False)


class CheckpointRpcs(RunRpcs):
    def SaveCheckpoint(
        self, request: pb.SaveCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.SaveCheckpointResponse:
        run = self._runs.run(request.run, self._principal(context))
        with self._use(request.run, context):
            saved = _needed(run.checkpointer).save(request.name)
        return pb.SaveCheckpointResponse(
            name=saved.name,
            model_version=saved.model_version,
            accumulated_batches=saved.accumulated_batches,
            digest=saved.digest,
        )

    def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> pb.ListCheckpointsResponse:
        run = self._runs.run(request.run, self._principal(context))
        with self._use(request.run, context):
            checkpointer = run.checkpointer
            listed = summaries(checkpointer.directory) if checkpointer is not None else []
        return pb.ListCheckpointsResponse(
            checkpoints=[
                pb.CheckpointSummary(
                    name=summary.name,
                    model_version=summary.model_version,
                    accumulated_batches=summary.accumulated_batches,
                    digest=summary.digest,
                    saved_at=summary.saved_at,
                )
                for summary in listed
            ]
        )

    def LoadCheckpoint(
        self, request: pb.LoadCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.LoadCheckpointResponse:
        _lookup_name(request.name)
        run = self._runs.run(request.run, self._principal(context))
        with self._use(request.run, context) as coordinator:
            checkpointer = _needed(run.checkpointer)
            store = coordinator.store
            layout = ModelLayout.of(store)

            def read() -> StoreState:
                # Under the store's lock, and only when the request id is new.
                return read_for_load(checkpointer.find(request.name).path, layout, "name")

            result = store.load_checkpoint(
                read,
                with_optimizer_state=request.with_optimizer_state,
                request_id=request.request_id,
                payload=(request.name,),
            )
            result = coordinator.durable(result)
        return serde_runs.load_result_to_proto(result)

    def DeleteCheckpoint(
        self, request: pb.DeleteCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.DeleteCheckpointResponse:
        _lookup_name(request.name)
        run = self._runs.run(request.run, self._principal(context))
        with self._use(request.run, context):
            _needed(run.checkpointer).delete(request.name)
        return pb.DeleteCheckpointResponse()

    def GetStateDigest(
        self, request: pb.GetStateDigestRequest, context: grpc.ServicerContext
    ) -> pb.GetStateDigestResponse:
        with self._use(request.run, context) as coordinator:
            digest, version = coordinator.store.state_digest()
        return pb.GetStateDigestResponse(digest=digest, model_version=version)
