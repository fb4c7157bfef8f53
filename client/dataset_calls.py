"""GradientClient's calls for datasets kept on the server (docs/datasets.md).

Built over a CallChannel: upload a dataset to the client's run once, list and delete the run's
datasets. Batches then name samples (gradserve.types.DatasetBatch) in compute_gradients and in
Train steps instead of carrying them. An upload is safe to repeat: the same content under the
same name is answered OK without the server keeping a second copy (the header carries the
content's digest, so a repeat is answered before its data is read); it is retried on
UNAVAILABLE like the other calls.
"""

from __future__ import annotations

import torch

from gradserve.chunks import DEFAULT_CHUNK_BYTES
from gradserve.serde_datasets import (
    dataset_summary_from_proto,
    upload_requests,
    upload_result_from_proto,
)
from gradserve.types import DatasetSummary
from gradserve.v1 import gradserve_pb2 as pb

from .call_channel import CallChannel


class DatasetCalls:
    """The datasets of the channel's run, over one CallChannel."""

    def __init__(self, channel: CallChannel) -> None:
        self._channel = channel

    def upload_dataset(
        self,
        name: str,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        replace: bool = False,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> DatasetSummary:
        """Keep `inputs` [N, ...] and `targets` [N, ...] on the server as dataset `name` of
        this client's run. Other content under a name the run holds is ALREADY_EXISTS unless
        `replace`; over the server's dataset budget, RESOURCE_EXHAUSTED (nothing kept)."""
        response = self._channel.call_stream(
            self._channel.stub.UploadDataset,
            lambda: upload_requests(
                name,
                inputs,
                targets,
                run=self._channel.run,
                replace=replace,
                chunk_bytes=chunk_bytes,
            ),
        )
        return upload_result_from_proto(response)

    def list_datasets(self) -> tuple[list[DatasetSummary], int]:
        """(the run's datasets by name, bytes of datasets the server can take now)."""
        response = self._channel.call(
            self._channel.stub.ListDatasets, pb.ListDatasetsRequest(run=self._channel.run)
        )
        datasets = [dataset_summary_from_proto(message) for message in response.datasets]
        return datasets, int(response.dataset_bytes_available)

    def delete_dataset(self, name: str) -> int:
        """Drop a dataset of the run; the bytes released. Sent once (a repeat that had
        landed would answer NOT_FOUND)."""
        request = pb.DeleteDatasetRequest(run=self._channel.run, name=name)
        response = self._channel.call(self._channel.stub.DeleteDataset, request, retry=False)
        return int(response.released_bytes)
