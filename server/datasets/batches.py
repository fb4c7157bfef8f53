"""Batches named by dataset samples, resolved into tensors before anything runs.

Each DatasetSlice is checked against the dataset it names (indices in range, a slice within
it) and against the limits an inline batch meets: the server's batch elements per tensor, and
per request no more batch bytes than one message could carry (--max-message-bytes), since
every batch of a request is gathered before its first step runs. A contiguous slice is a
view of the stored tensors; indices gather a copy (index_select), the same values a client's
`inputs[indices]` sends inline. The stored tensors were checked whole at upload
(server/datasets/uploads.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from gradserve.errors import InvalidArgumentError, ResourceExhaustedError
from gradserve.types import DatasetBatch

from .registry import DatasetRegistry, StoredDataset


class DatasetBatches:
    """Resolves the named batches of one request (call it once per batch, in order)."""

    def __init__(
        self, registry: DatasetRegistry, owner: Hashable, max_elements: int, max_bytes: int
    ) -> None:
        self._registry = registry
        self._owner = owner
        self._max_elements = max_elements
        self._max_bytes = max_bytes
        self._bytes = 0

    def __call__(self, batch: DatasetBatch, field: str) -> tuple[torch.Tensor, torch.Tensor]:
        stored = self._registry.get(self._owner, batch.dataset, f"{field}.dataset")
        count_field = f"{field}.indices" if batch.indices else f"{field}.count"
        index = _checked_indices(batch, stored, field) if batch.indices else None
        if index is None:
            _check_slice(batch, stored, field)
        count = len(batch.indices) if batch.indices else batch.count
        sample = stored.inputs[0]
        if count * max(sample.numel(), stored.targets[0].numel()) > self._max_elements:
            raise ResourceExhaustedError(
                f"{count_field}: {count} samples is over the server's limit of "
                f"{self._max_elements} elements per batch tensor",
                field=count_field,
            )
        self._bytes += count * (stored.bytes // stored.samples)
        if self._bytes > self._max_bytes:
            raise ResourceExhaustedError(
                f"{count_field}: the request's batches come to over {self._max_bytes} bytes "
                "(--max-message-bytes, what one inline request could carry)",
                field=count_field,
            )
        return selected(stored, index, batch.start, batch.count)


def _checked_indices(batch: DatasetBatch, stored: StoredDataset, field: str) -> torch.Tensor:
    if len(batch.indices) > stored.samples:
        raise InvalidArgumentError(
            f"{field}.indices: {len(batch.indices)} indices, more than the dataset's "
            f"{stored.samples} samples",
            field=f"{field}.indices",
        )
    return checked_indices(batch.indices, stored, field)


def _check_slice(batch: DatasetBatch, stored: StoredDataset, field: str) -> None:
    check_range(batch.start, batch.count, stored, field, "a batch")


def checked_indices(indices: Sequence[int], stored: StoredDataset, field: str) -> torch.Tensor:
    """`indices` as an index tensor, each checked to be a sample of `stored` (the first one
    outside is named as `{field}.indices[i]`)."""
    index = torch.tensor(indices, dtype=torch.int64)
    outside = (index < 0) | (index >= stored.samples)
    if bool(outside.any()):
        position = int(outside.nonzero()[0])
        raise InvalidArgumentError(
            f"{field}.indices[{position}]: {indices[position]} is outside the dataset's "
            f"samples [0, {stored.samples})",
            field=f"{field}.indices",
        )
    return index


def selected(
    stored: StoredDataset, index: torch.Tensor | None, start: int, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and targets at `index` (gathered: the values a client's `inputs[index]`
    sends inline), or without one the samples [start, start + count) as views."""
    if index is None:
        end = start + count
        return stored.inputs[start:end], stored.targets[start:end]
    return stored.inputs.index_select(0, index), stored.targets.index_select(0, index)


def check_range(start: int, count: int, stored: StoredDataset, field: str, what: str) -> None:
    """[start, start + count) is a non-empty range of `stored`'s samples; `what` names the
    message that names it ("a batch", "a pass") in the error."""
    if count < 1:
        raise InvalidArgumentError(
            f"{field}.count: {count}; {what} names indices or count >= 1 samples",
            field=f"{field}.count",
        )
    if start < 0 or start + count > stored.samples:
        raise InvalidArgumentError(
            f"{field}.start: [{start}, {start + count}) is outside the dataset's samples "
            f"[0, {stored.samples})",
            field=f"{field}.start",
        )
