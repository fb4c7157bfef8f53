"""Datasets kept on the server, between plain types and gradserve.v1 messages: the batch that
names samples (DatasetSlice), the dataset's summary, and the upload's messages.

Paired `x_to_proto` / `x_from_proto` functions, as in gradserve.serde; docs/datasets.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gradserve.chunks import DEFAULT_CHUNK_BYTES
from gradserve.codec import dtype_from_proto, dtype_to_proto, spec_to_proto
from gradserve.dataset_digest import dataset_digest
from gradserve.errors import InvalidArgumentError
from gradserve.names import check_name
from gradserve.pass_types import DatasetPass
from gradserve.types import (
    DatasetBatch,
    DatasetSummary,
    DatasetUploadHeader,
    DeclaredTensor,
    TensorSpec,
)
from gradserve.v1 import gradserve_pb2 as pb

# Indices one DatasetSlice may carry (a batch of more samples is over any batch limit).
MAX_INDICES = 1 << 20


def dataset_batch_into_proto(batch: DatasetBatch, message: pb.DatasetSlice) -> pb.DatasetSlice:
    named_samples_into_proto(batch, message)
    return message


def named_samples_into_proto(
    named: DatasetBatch | DatasetPass, message: pb.DatasetSlice | pb.DatasetPass
) -> None:
    """The samples a DatasetSlice or a DatasetPass names: the dataset, then its indices or
    its range (check_named_samples is the reverse's check)."""
    message.dataset = named.dataset
    if named.indices:
        message.indices.extend(named.indices)
    else:
        message.start = named.start
        message.count = named.count


def dataset_batch_from_proto(message: pb.DatasetSlice, field: str = "dataset") -> DatasetBatch:
    """The batch as named; its bounds are checked against the dataset where it lives."""
    check_named_samples(message, field)
    return DatasetBatch(message.dataset, tuple(message.indices), message.start, message.count)


# gradserve.serde imports this module (for Train steps), so its TensorSpec pair is not used.
def _spec_to_proto(spec: TensorSpec) -> pb.TensorSpec:
    return spec_to_proto(spec.name, spec.dtype, spec.shape)


def _spec_from_proto(message: pb.TensorSpec, field: str) -> TensorSpec:
    return TensorSpec(
        message.name, dtype_from_proto(message.dtype, f"{field}.dtype"), tuple(message.shape)
    )


def dataset_summary_to_proto(summary: DatasetSummary) -> pb.DatasetInfo:
    return pb.DatasetInfo(
        name=summary.name,
        samples=summary.samples,
        inputs=_spec_to_proto(summary.inputs),
        targets=_spec_to_proto(summary.targets),
        bytes=summary.bytes,
        digest=summary.digest,
    )


def dataset_summary_from_proto(
    message: pb.DatasetInfo, unchanged: bool = False, replaced: bool = False
) -> DatasetSummary:
    return DatasetSummary(
        name=message.name,
        samples=message.samples,
        inputs=_spec_from_proto(message.inputs, "inputs"),
        targets=_spec_from_proto(message.targets, "targets"),
        bytes=message.bytes,
        digest=message.digest,
        unchanged=unchanged,
        replaced=replaced,
    )


def upload_result_to_proto(summary: DatasetSummary) -> pb.UploadDatasetResponse:
    return pb.UploadDatasetResponse(
        dataset=dataset_summary_to_proto(summary),
        unchanged=summary.unchanged,
        replaced=summary.replaced,
    )


def upload_result_from_proto(message: pb.UploadDatasetResponse) -> DatasetSummary:
    return dataset_summary_from_proto(message.dataset, message.unchanged, message.replaced)


def datasets_to_proto(listed: list[DatasetSummary], available: int) -> pb.ListDatasetsResponse:
    return pb.ListDatasetsResponse(
        datasets=[dataset_summary_to_proto(summary) for summary in listed],
        dataset_bytes_available=available,
    )


def deleted_dataset_to_proto(released_bytes: int) -> pb.DeleteDatasetResponse:
    return pb.DeleteDatasetResponse(released_bytes=released_bytes)


def upload_header_from_proto(message: pb.UploadDatasetRequest) -> DatasetUploadHeader:
    """The header as sent; dtypes and shapes are checked against the run's model."""

    def declared(spec: pb.TensorSpec) -> DeclaredTensor:
        return DeclaredTensor(spec.dtype, tuple(spec.shape))

    return DatasetUploadHeader(
        message.run,
        message.name,
        declared(message.inputs),
        declared(message.targets),
        message.replace,
        message.digest,
    )


def upload_data_from_proto(
    first: pb.UploadDatasetRequest, rest: Iterator[pb.UploadDatasetRequest]
) -> Iterator[bytes]:
    """The upload's bytes, message by message (the header's too), as they arrive."""
    yield first.data
    for message in rest:
        if message.run or message.name or message.HasField("inputs") or message.digest:
            raise InvalidArgumentError(
                "name: the header (run, name, inputs, targets, digest) is for the first "
                "message only",
                field="name",
            )
        yield message.data  # read once: the upb backend builds a new object on every access


def upload_requests(
    name: str,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    run: str = "",
    replace: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[pb.UploadDatasetRequest]:
    """The messages of one upload: the header (with the content's digest) and the bytes of
    inputs then targets in chunks of at most chunk_bytes, cut as they are consumed."""
    header = pb.UploadDatasetRequest(
        run=run,
        name=name,
        inputs=_spec_to_proto(TensorSpec("", inputs.dtype, tuple(inputs.shape))),
        targets=_spec_to_proto(TensorSpec("", targets.dtype, tuple(targets.shape))),
        replace=replace,
        digest=dataset_digest(inputs, targets),
    )
    yield header
    for tensor in (inputs, targets):
        dtype_to_proto(tensor.dtype)  # TypeError before any byte for a dtype the wire lacks
        raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        for offset in range(0, raw.numel(), chunk_bytes):
            yield pb.UploadDatasetRequest(data=raw[offset : offset + chunk_bytes].numpy().tobytes())


def check_named_samples(message: pb.DatasetSlice | pb.DatasetPass, field: str) -> None:
    """What a message naming samples (a DatasetSlice, a DatasetPass) must hold before any
    dataset is looked at: a name, at most MAX_INDICES indices, indices or a range."""
    if not message.dataset:
        raise InvalidArgumentError(
            f"{field}.dataset: a dataset name is needed", field=f"{field}.dataset"
        )
    check_name(message.dataset, f"{field}.dataset", "a dataset name")
    if len(message.indices) > MAX_INDICES:
        raise InvalidArgumentError(
            f"{field}.indices: {len(message.indices)} indices, at most {MAX_INDICES}",
            field=f"{field}.indices",
        )
    if message.indices and (message.start or message.count):
        raise InvalidArgumentError(
            f"{field}.start: indices or start and count, not both", field=f"{field}.start"
        )
