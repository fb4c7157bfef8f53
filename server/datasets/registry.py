"""Datasets kept on the server: per run, in memory, bounded in count per run and in bytes
across the server.

A dataset belongs to a run (the key is the Run object itself, so a run deleted and created
again under its name starts with none) and therefore to the run's principal: whoever cannot
see the run cannot see its datasets. Bytes are reserved before an upload keeps any
(server/datasets/uploads.py) and released when it fails, when the dataset is deleted or
replaced, and when its run is deleted. Nothing is checkpointed: after a restart clients upload
again (docs/datasets.md).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from gradserve.errors import AlreadyExistsError, NotFoundError, ResourceExhaustedError
from gradserve.names import check_name
from gradserve.types import DatasetSummary, TensorSpec

from ..config import DatasetsConfig

ENV_MAX_DATASET_BYTES = "GRADSERVE_MAX_DATASET_BYTES"
ENV_MAX_DATASETS_PER_RUN = "GRADSERVE_MAX_DATASETS_PER_RUN"


@dataclass(frozen=True)
class StoredDataset:
    """One uploaded dataset: inputs and targets checked against the run's model at upload."""

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    digest: str

    @property
    def samples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def bytes(self) -> int:
        return tensor_bytes(self.inputs) + tensor_bytes(self.targets)

    def summary(self, unchanged: bool = False, replaced: bool = False) -> DatasetSummary:
        """As UploadDataset (`unchanged`, `replaced`) and ListDatasets show it."""

        def spec(tensor: torch.Tensor) -> TensorSpec:
            return TensorSpec("", tensor.dtype, tuple(tensor.shape))

        return DatasetSummary(
            self.name,
            self.samples,
            spec(self.inputs),
            spec(self.targets),
            self.bytes,
            self.digest,
            unchanged,
            replaced,
        )


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def not_found(name: str, field: str = "name") -> NotFoundError:
    return NotFoundError(
        f"{field}: no dataset {name[:80]!r} in this run (datasets are in memory only: upload "
        "it again after a server restart)",
        field=field,
        reason="DATASET_NOT_FOUND",
    )


class DatasetRegistry:
    """Datasets by owner (a run) and name, safe to call from many threads."""

    def __init__(self, config: DatasetsConfig | None = None) -> None:
        self.config = config or DatasetsConfig()
        self._lock = threading.Lock()
        self._owned: dict[Hashable, dict[str, StoredDataset]] = {}
        # Bytes of stored datasets, and of uploads under way (reserved, not yet stored).
        self._held = 0
        self._reserved = 0
        # Runs whose datasets were dropped (deleted runs): an upload still under way for one
        # must not store into it afterwards.
        self._dropped: weakref.WeakSet[Hashable] = weakref.WeakSet()

    def held_bytes(self) -> int:
        return self._held

    def available(self) -> int:
        with self._lock:
            return max(0, self.config.max_bytes - self._held - self._reserved)

    @contextmanager
    def reserved(self, owner: Hashable, name: str, size: int) -> Iterator[Callable[[], None]]:
        """Room for `size` bytes for the length of an upload, refused before any is spent
        (with the run's count of datasets); the yielded function checks the count again."""
        with self._lock:
            self._check_count(owner, name)
            left = self.config.max_bytes - self._held - self._reserved
            if size > left:
                raise ResourceExhaustedError(
                    f"max_dataset_bytes: the dataset's {size} bytes would pass the server's "
                    f"dataset budget of {self.config.max_bytes} ({max(0, left)} left)",
                    field="max_dataset_bytes",
                )
            self._reserved += size
        try:
            yield lambda: self._check_count(owner, name)
        finally:
            with self._lock:
                self._reserved -= size

    def _check_count(self, owner: Hashable, name: str) -> None:
        held = self._owned.get(owner, {})
        if name not in held and len(held) >= self.config.max_per_run:
            raise ResourceExhaustedError(
                f"max_datasets_per_run: this run holds {len(held)} datasets, at most "
                f"{self.config.max_per_run}",
                field="max_datasets_per_run",
            )

    def store(
        self, owner: Hashable, dataset: StoredDataset, *, replace: bool = False
    ) -> tuple[StoredDataset, StoredDataset | None]:
        """Keep the dataset under its name (call inside `reserved` for its bytes): (what the
        name now holds, what it replaced). The same content already held is kept as it is;
        other content is ALREADY_EXISTS unless `replace`."""
        with self._lock:
            if owner in self._dropped:
                raise NotFoundError("run: the run was deleted during the upload", field="run")
            held = self._owned.setdefault(owner, {})
            previous = held.get(dataset.name)
            if previous is not None and previous.digest == dataset.digest:
                return previous, None
            if previous is not None and not replace:
                raise AlreadyExistsError(
                    f"name: the run holds a dataset {dataset.name!r} with other content; set "
                    "replace to replace it",
                    field="name",
                )
            self._check_count(owner, dataset.name)
            held[dataset.name] = dataset
            self._held += dataset.bytes - (previous.bytes if previous is not None else 0)
            return dataset, previous

    def find(self, owner: Hashable, name: str) -> StoredDataset | None:
        with self._lock:
            return self._owned.get(owner, {}).get(name)

    def get(self, owner: Hashable, name: str, field: str = "name") -> StoredDataset:
        found = self.find(owner, name)
        if found is None:
            raise not_found(name, field)
        return found

    def list(self, owner: Hashable) -> list[StoredDataset]:
        with self._lock:
            return sorted(self._owned.get(owner, {}).values(), key=lambda d: d.name)

    def delete(self, owner: Hashable, name: str) -> int:
        check_name(name, "name", "a dataset name")
        with self._lock:
            dataset = self._owned.get(owner, {}).pop(name, None)
            if dataset is None:
                raise not_found(name)
            self._held -= dataset.bytes
            return dataset.bytes

    def drop_owner(self, owner: Hashable) -> int:
        """Release every dataset of a run (it was deleted); the bytes released."""
        with self._lock:
            self._dropped.add(owner)
            released = sum(d.bytes for d in self._owned.pop(owner, {}).values())
            self._held -= released
            return released


def add_dataset_flags(
    add: Callable[..., object], env_or: Callable[[str, object], str], default: dict[str, object]
) -> None:
    """The flags of the bounds above (server/flags.py calls this)."""
    add(
        "--max-dataset-bytes",
        type=int,
        default=int(env_or(ENV_MAX_DATASET_BYTES, default["max_dataset_bytes"])),
        help=f"bytes of uploaded datasets across all runs [{ENV_MAX_DATASET_BYTES}]",
    )
    add(
        "--max-datasets-per-run",
        type=int,
        default=int(env_or(ENV_MAX_DATASETS_PER_RUN, default["max_datasets_per_run"])),
        help=f"datasets one run holds at once [{ENV_MAX_DATASETS_PER_RUN}]",
    )
