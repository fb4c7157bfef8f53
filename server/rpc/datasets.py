"""The RPCs of datasets kept on the server: upload, list, delete; and the resolvers that turn
batches naming dataset samples into tensors for ComputeGradients and Train, and a Train
request's dataset pass into the store's steps.

One of the handlers the servicer (servicer.py) delegates to: decode, one call to the run's
ServedRun (the upload, checked against its model) or to the dataset registry
(server/datasets/registry.py), encode. A run's datasets are looked up through the run, so the
run's owner is theirs: another principal gets NOT_FOUND for the run. DeleteRun drops them;
CreateRun's info advertises the room left, as GetModelInfo does.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from gradserve.errors import InvalidArgumentError
from gradserve.serde_datasets import (
    datasets_to_proto,
    deleted_dataset_to_proto,
    upload_data_from_proto,
    upload_header_from_proto,
    upload_result_to_proto,
)
from gradserve.serde_passes import dataset_pass_from_proto
from gradserve.v1 import gradserve_pb2 as pb

from ..config import LimitsConfig
from ..datasets.batches import DatasetBatches
from ..datasets.passes import expand_pass
from ..datasets.registry import DatasetRegistry
from ..store.pass_runs import PassSteps
from .runs import RunAccess


class DatasetRpcs:
    def __init__(self, access: RunAccess, datasets: DatasetRegistry, limits: LimitsConfig) -> None:
        self._access = access
        self._datasets = datasets
        self._max_elements = limits.max_batch_elements
        self._max_message_bytes = limits.max_message_bytes

    def batches(self, run: str, context: grpc.ServicerContext) -> DatasetBatches:
        """The resolver for one request's named batches in the run."""
        return DatasetBatches(
            self._datasets,
            self._access.run_of(run, context),
            self._max_elements,
            self._max_message_bytes,
        )

    def dataset_pass(
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
            self._access.run_of(run, context),
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
        header = upload_header_from_proto(first)
        with self._access.use(header.run, context) as served:
            owner = self._access.run_of(header.run, context)
            uploaded = served.upload_dataset(
                header, upload_data_from_proto(first, messages), self._datasets, owner
            )
        return upload_result_to_proto(uploaded)

    def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> pb.ListDatasetsResponse:
        owner = self._access.run_of(request.run, context)
        listed = [dataset.summary() for dataset in self._datasets.list(owner)]
        return datasets_to_proto(listed, self._datasets.available())

    def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> pb.DeleteDatasetResponse:
        owner = self._access.run_of(request.run, context)
        return deleted_dataset_to_proto(self._datasets.delete(owner, request.name))
