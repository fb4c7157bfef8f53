"""The RPCs of a run's checkpoints: save (named or not), list, load, delete, and the state
digest that proves what a run holds.

One of the handlers the servicer (servicer.py) delegates to: decode, one call to the run's
ServedRun, encode. A run's checkpoints live in its checkpoint folder
(server/checkpoints/names.py names them); the digest is server/store/state_digest.py's.
"""

from __future__ import annotations

import grpc

from gradserve import serde_runs
from gradserve.errors import InvalidArgumentError
from gradserve.v1 import gradserve_pb2 as pb

from ..checkpoints.names import check_checkpoint_name
from .runs import RunAccess


def _lookup_name(name: str) -> None:
    """Checked before the run is looked up: a malformed name is the request's fault."""
    if not name:
        raise InvalidArgumentError("name: a checkpoint name is needed", field="name")
    check_checkpoint_name(name, new=False)


class CheckpointRpcs:
    def __init__(self, access: RunAccess) -> None:
        self._access = access

    def SaveCheckpoint(
        self, request: pb.SaveCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.SaveCheckpointResponse:
        with self._access.use(request.run, context) as served:
            saved = served.save_checkpoint(request.name)
        return serde_runs.saved_checkpoint_to_proto(saved)

    def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> pb.ListCheckpointsResponse:
        with self._access.use(request.run, context) as served:
            listed = served.list_checkpoints()
        return serde_runs.checkpoints_to_proto(listed)

    def LoadCheckpoint(
        self, request: pb.LoadCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.LoadCheckpointResponse:
        _lookup_name(request.name)
        with self._access.use(request.run, context) as served:
            result = served.load_checkpoint(
                request.name,
                with_optimizer_state=request.with_optimizer_state,
                request_id=request.request_id,
            )
        return serde_runs.load_result_to_proto(result)

    def DeleteCheckpoint(
        self, request: pb.DeleteCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.DeleteCheckpointResponse:
        _lookup_name(request.name)
        with self._access.use(request.run, context) as served:
            served.delete_checkpoint(request.name)
        return serde_runs.deleted_checkpoint_to_proto()

    def GetStateDigest(
        self, request: pb.GetStateDigestRequest, context: grpc.ServicerContext
    ) -> pb.GetStateDigestResponse:
        with self._access.use(request.run, context) as served:
            digest = served.state_digest()
        return serde_runs.state_digest_to_proto(digest)
