"""The GradientService servicer: the run registry and the datasets, and one handler per
group of RPCs, each RPC delegated to its handler.

A handler decodes the request with gradserve.serde*, makes one call on the run's ServedRun
(server/coordination/served_run.py, looked up once through RunAccess for the caller's
principal) or on the registry, and encodes the answer with gradserve.serde*. No torch
arithmetic, no metrics and no error handling here or in the handlers: the ServedRun does the
work through its store and records what it did; the interceptor turns the project's errors
into statuses. Handlers: training.py, parameters.py, outputs.py, checkpoints.py, runs.py,
datasets.py, sampling.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc
from gradserve.wire_messages import ChunkView

from ..config import LimitsConfig, SamplingLimits
from ..datasets.registry import DatasetRegistry
from ..runs.principals import PrincipalTable
from ..runs.registry import RunRegistry
from .checkpoints import CheckpointRpcs
from .datasets import DatasetRpcs
from .outputs import LossRpcs
from .parameters import ParameterRpcs
from .runs import RunAccess, RunRpcs
from .sampling import SamplingRpcs
from .training import TrainingRpcs


class GradientServicer(pb_grpc.GradientServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        runs: RunRegistry,
        limits: LimitsConfig,
        principals: PrincipalTable | None = None,
        datasets: DatasetRegistry | None = None,
        sampling: SamplingLimits | None = None,
    ) -> None:
        self.runs = runs
        self.datasets = datasets or DatasetRegistry()
        access = RunAccess(runs, principals or PrincipalTable())
        self._datasets = DatasetRpcs(access, self.datasets, limits)
        self._training = TrainingRpcs(access, self._datasets, limits.max_batch_elements)
        self._parameters = ParameterRpcs(access, self.datasets, limits.max_message_bytes)
        self._losses = LossRpcs(access, limits.max_batch_elements)
        self._checkpoints = CheckpointRpcs(access)
        self._runs = RunRpcs(access, self.datasets)
        self._sampling = SamplingRpcs(access, sampling or SamplingLimits())

    # -- training ------------------------------------------------------------------

    def ComputeGradients(
        self, request: pb.ComputeGradientsRequest, context: grpc.ServicerContext
    ) -> pb.ComputeGradientsResponse:
        return self._training.ComputeGradients(request, context)

    def ApplyUpdate(
        self, request: pb.ApplyUpdateRequest, context: grpc.ServicerContext
    ) -> pb.ApplyUpdateResponse:
        return self._training.ApplyUpdate(request, context)

    def Train(
        self, request_iterator: Iterator[pb.TrainRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.TrainResponse]:
        return self._training.Train(request_iterator, context)

    def Evaluate(
        self, request: pb.EvaluateRequest, context: grpc.ServicerContext
    ) -> pb.EvaluateResponse:
        return self._training.Evaluate(request, context)

    def DiscardGradients(
        self, request: pb.DiscardGradientsRequest, context: grpc.ServicerContext
    ) -> pb.DiscardGradientsResponse:
        return self._training.DiscardGradients(request, context)

    def DescribeGraph(
        self, request: pb.DescribeGraphRequest, context: grpc.ServicerContext
    ) -> pb.DescribeGraphResponse:
        return self._training.DescribeGraph(request, context)

    # -- parameters ----------------------------------------------------------------

    def GetParameters(
        self, request: pb.GetParametersRequest, context: grpc.ServicerContext
    ) -> bytes:
        return self._parameters.GetParameters(request, context)

    def SetParameters(
        self, request: pb.SetParametersRequest, context: grpc.ServicerContext
    ) -> pb.SetParametersResponse:
        return self._parameters.SetParameters(request, context)

    def StreamParameters(
        self, request: pb.StreamParametersRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        return self._parameters.StreamParameters(request, context)

    def UploadParameters(
        self, request_iterator: Iterator[ChunkView], context: grpc.ServicerContext
    ) -> pb.UploadParametersResponse:
        return self._parameters.UploadParameters(request_iterator, context)

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        return self._parameters.GetModelInfo(request, context)

    # -- client-computed losses ----------------------------------------------------

    def ComputeOutputs(
        self, request: pb.ComputeOutputsRequest, context: grpc.ServicerContext
    ) -> pb.ComputeOutputsResponse:
        return self._losses.ComputeOutputs(request, context)

    def BackwardOutputs(
        self, request: pb.BackwardOutputsRequest, context: grpc.ServicerContext
    ) -> pb.BackwardOutputsResponse:
        return self._losses.BackwardOutputs(request, context)

    # -- checkpoints and digests ---------------------------------------------------

    def SaveCheckpoint(
        self, request: pb.SaveCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.SaveCheckpointResponse:
        return self._checkpoints.SaveCheckpoint(request, context)

    def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> pb.ListCheckpointsResponse:
        return self._checkpoints.ListCheckpoints(request, context)

    def LoadCheckpoint(
        self, request: pb.LoadCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.LoadCheckpointResponse:
        return self._checkpoints.LoadCheckpoint(request, context)

    def DeleteCheckpoint(
        self, request: pb.DeleteCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.DeleteCheckpointResponse:
        return self._checkpoints.DeleteCheckpoint(request, context)

    def GetStateDigest(
        self, request: pb.GetStateDigestRequest, context: grpc.ServicerContext
    ) -> pb.GetStateDigestResponse:
        return self._checkpoints.GetStateDigest(request, context)

    # -- runs ----------------------------------------------------------------------

    def CreateRun(
        self, request: pb.CreateRunRequest, context: grpc.ServicerContext
    ) -> pb.CreateRunResponse:
        return self._runs.CreateRun(request, context)

    def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListRunsResponse:
        return self._runs.ListRuns(request, context)

    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.GetRunResponse:
        return self._runs.GetRun(request, context)

    def DeleteRun(
        self, request: pb.DeleteRunRequest, context: grpc.ServicerContext
    ) -> pb.DeleteRunResponse:
        return self._runs.DeleteRun(request, context)

    # -- datasets ------------------------------------------------------------------

    def UploadDataset(
        self, request_iterator: Iterator[pb.UploadDatasetRequest], context: grpc.ServicerContext
    ) -> pb.UploadDatasetResponse:
        return self._datasets.UploadDataset(request_iterator, context)

    def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> pb.ListDatasetsResponse:
        return self._datasets.ListDatasets(request, context)

    def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> pb.DeleteDatasetResponse:
        return self._datasets.DeleteDataset(request, context)

    # -- sampling ------------------------------------------------------------------

    def Sample(
        self, request: pb.SampleRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SampleResponse]:
        return self._sampling.Sample(request, context)
