"""The RPCs of datasets kept on the server: upload, list, delete; and the resolvers that turn
batches naming dataset samples into tensors for ComputeGradients and Train, and a Train
request's dataset pass into the store's steps.

Part of the GradientService servicer (servicer.py inherits it, beside LossRpcs and
CheckpointRpcs): decode, one call to the dataset registry (server/datasets/registry.py) or the upload
(server/datasets/uploads.py), encode. A run's datasets are looked up through the run, so the
run's owner is theirs: another principal gets NOT_FOUND for the run. DeleteRun drops them;
CreateRun's info advertises the room left, as GetModelInfo does.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import torch

from gradserve.errors import InvalidArgumentError
from gradserve.serde_datasets import dataset_summary_to_proto, upload_result_to_proto
from gradserve.serde_passes import dataset_pass_from_proto
from gradserve.types import DatasetSummary, TensorSpec
from gradserve.v1 import gradserve_pb2 as pb

from ..datasets.batches import DatasetBatches
from ..datasets.passes import expand_pass
from ..datasets.registry import DatasetRegistry, StoredDataset
from ..datasets.uploads import upload_dataset
from ..runs.lifecycle import Run
from ..store.pass_runs import PassSteps
from .runs import RunRpcs, _checked_metadata


def summary(
    dataset: StoredDataset, unchanged: bool = False, replaced: bool = False
) -> DatasetSummary:
    def spec(tensor: torch.Tensor) -> TensorSpec:
        return TensorSpec("", tensor.dtype, tuple(tensor.shape))

    return DatasetSummary(
        dataset.name,
        dataset.samples,
        spec(dataset.inputs),
        spec(dataset.targets),
        dataset.bytes,
        dataset.digest,
        unchanged,
        replaced,
    )


class DatasetRpcs(RunRpcs):
    _datasets: DatasetRegistry
    _max_elements: int
    _max_message_bytes: int

    def _run_of(self, run: str, context: grpc.ServicerContext) -> Run:
        _checked_metadata(run, context)
        return self._runs.run(run, self._principal(context))

    def _dataset_batches(self, run: str, context: grpc.ServicerContext) -> DatasetBatches:
        """The resolver for one request's named batches in the run."""
        return DatasetBatches(
            self._datasets,
            self._run_of(run, context),
            self._max_elements,
            self._max_message_bytes,
        )

    def _dataset_pass(
        self, run: str, context: grpc.ServicerContext, request: pb.TrainRequest
    ) -> PassSteps:
        """A Train request's dataset pass as the store's steps (server/datasets/passes.py)."""
        if request.steps:
            raise InvalidArgumentError(
                "dataset_pass: a request carries steps or a dataset pass, not both",
                field="dataset_pass",
            )
        descriptor = dataset_pass_from_proto(request.dataset_pass)
        return expand_pass(
            self._datasets,
            self._run_of(run, context),
            descriptor,
            self._max_elements,
            self._max_message_bytes,
        )

    def UploadDataset(
        self, request_iterator: Iterator[pb.UploadDatasetRequest], context: grpc.ServicerContext
    ) -> pb.UploadDatasetResponse:
        messages = iter(request_iterator)
        first = next(messages, None)
        if first is None:
            raise InvalidArgumentError("name: the upload is empty", field="name")
        with self._use(first.run, context) as coordinator:
            owner = self._run_of(first.run, context)
            uploaded = upload_dataset(
                first, messages, coordinator.store.model, self._datasets, owner
            )
        return upload_result_to_proto(
            summary(uploaded.dataset, uploaded.unchanged, uploaded.replaced)
        )

    def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> pb.ListDatasetsResponse:
        owner = self._run_of(request.run, context)
        return pb.ListDatasetsResponse(
            datasets=[dataset_summary_to_proto(summary(d)) for d in self._datasets.list(owner)],
            dataset_bytes_available=self._datasets.available(),
        )

    def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> pb.DeleteDatasetResponse:
        owner = self._run_of(request.run, context)
        return pb.DeleteDatasetResponse(released_bytes=self._datasets.delete(owner, request.name))

    def CreateRun(
        self, request: pb.CreateRunRequest, context: grpc.ServicerContext
    ) -> pb.CreateRunResponse:
        response = super().CreateRun(request, context)
        response.info.dataset_bytes_available = self._datasets.available()  # as GetModelInfo
        return response

    def DeleteRun(
        self, request: pb.DeleteRunRequest, context: grpc.ServicerContext
    ) -> pb.DeleteRunResponse:
        owner = self._run_of(request.run, context) if request.run else None
        response = super().DeleteRun(request, context)
        if owner is not None:
            self._datasets.drop_owner(owner)
        return response
