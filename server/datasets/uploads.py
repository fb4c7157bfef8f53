"""One UploadDataset stream, from its header to a stored dataset, all or nothing.

Order of the checks, each before anything is spent on the next: the header (name, dtypes and
shapes against the run's model), the byte budget and the run's dataset count (reserved in the
registry), then the bytes, copied into tensors allocated once at their declared size, then the
values (model.check_batch over the whole dataset: finite inputs and targets, class indices in
range), so a bad value is refused here, once, naming the field. A failure anywhere releases the
reservation and stores nothing.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

import torch

from gradserve.chunks import max_chunks
from gradserve.codec import decode_shape, dtype_from_proto, torch_dtype_name
from gradserve.dataset_digest import digest_header
from gradserve.errors import InvalidArgumentError
from gradserve.names import check_name
from gradserve.types import DatasetUploadHeader, DeclaredTensor

from ..models.model import BatchSpec, Model
from .registry import DatasetRegistry, StoredDataset


@dataclass(frozen=True)
class Uploaded:
    dataset: StoredDataset
    unchanged: bool = False
    replaced: bool = False


def _declared(
    spec: DeclaredTensor, field: str, expected: BatchSpec
) -> tuple[torch.dtype, tuple[int, ...]]:
    """The declared dtype and shape, once both fit the model."""
    dtype = dtype_from_proto(spec.dtype, f"{field}.dtype")
    if dtype != expected.dtype:
        raise InvalidArgumentError(
            f"{field}.dtype: {torch_dtype_name(dtype)}, the model takes "
            f"{torch_dtype_name(expected.dtype)}",
            field=f"{field}.dtype",
        )
    shape = decode_shape(spec.shape, f"{field}.shape")
    if len(shape) != 1 + len(expected.sample_shape) or shape[1:] != expected.sample_shape:
        wanted = ", ".join(map(str, ("N", *expected.sample_shape)))
        raise InvalidArgumentError(
            f"{field}.shape: {list(shape)}, expected [{wanted}]", field=f"{field}.shape"
        )
    if shape[0] == 0:
        raise InvalidArgumentError(f"{field}.shape: no samples", field=f"{field}.shape")
    return dtype, shape


def upload_dataset(
    header: DatasetUploadHeader,
    data: Iterator[bytes],
    model: Model,
    registry: DatasetRegistry,
    owner: Hashable,
) -> Uploaded:
    check_name(header.name, "name", "a dataset name")
    declared_inputs = _declared(header.inputs, "inputs", model.input)
    declared_targets = _declared(header.targets, "targets", model.target)
    samples = declared_inputs[1][0]
    if declared_targets[1][0] != samples:
        raise InvalidArgumentError(
            f"targets.shape: {declared_targets[1][0]} samples, inputs has {samples}",
            field="targets.shape",
        )
    existing = registry.find(owner, header.name)
    if existing is not None and header.digest and header.digest == existing.digest:
        return Uploaded(existing, unchanged=True)  # the data need not even be read
    sizes = (_bytes(*declared_inputs), _bytes(*declared_targets))
    digest = hashlib.sha256(
        digest_header(header.inputs.dtype, header.inputs.shape, header.targets.dtype,
                      header.targets.shape)
    )  # fmt: skip
    with registry.reserved(owner, header.name, sum(sizes)) as recheck:
        # Allocated once the budget has admitted them; filled in place.
        inputs = torch.empty(declared_inputs[1], dtype=declared_inputs[0])
        targets = torch.empty(declared_targets[1], dtype=declared_targets[0])
        _fill((inputs, targets), sizes, data, digest)
        dataset = StoredDataset(header.name, inputs, targets, digest.hexdigest())
        if header.digest and header.digest != dataset.digest:
            raise InvalidArgumentError(
                f"digest: the data's digest is {dataset.digest}, not {header.digest[:80]!r}",
                field="digest",
            )
        model.check_batch(inputs, targets)
        recheck()
        kept, previous = registry.store(owner, dataset, replace=header.replace)
    return Uploaded(kept, unchanged=kept is not dataset, replaced=previous is not None)


def _bytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def _fill(
    tensors: tuple[torch.Tensor, torch.Tensor],
    sizes: tuple[int, int],
    messages: Iterator[bytes],
    digest: hashlib._Hash,
) -> None:
    """Copy the stream's data (each message's bytes) into the tensors' bytes, in order,
    checking the total."""
    views = [t.reshape(-1).view(torch.uint8) for t in tensors]
    total = sum(sizes)
    allowed = max_chunks(sizes) + 1  # one per tensor and 64 KiB, and the header
    offset = 0
    for number, data in enumerate(messages, start=1):
        if number > allowed:
            raise InvalidArgumentError(
                f"data: more than {allowed} messages for {total} bytes", field="data"
            )
        if offset + len(data) > total:
            raise InvalidArgumentError(
                f"data: more than the {total} bytes the header declares", field="data"
            )
        if data:
            digest.update(data)
            source = torch.frombuffer(data, dtype=torch.uint8)
            taken = 0
            while taken < len(data):
                which = 0 if offset < sizes[0] else 1
                start = offset if which == 0 else offset - sizes[0]
                room = views[which].numel() - start
                piece = min(room, len(data) - taken)
                views[which][start : start + piece].copy_(source[taken : taken + piece])
                taken += piece
                offset += piece
    if offset != total:
        raise InvalidArgumentError(
            f"data: {offset} bytes, the header declares {total}", field="data"
        )
    if sys.byteorder != "little":
        for tensor in tensors:
            if tensor.element_size() > 1:
                flipped = tensor.view(torch.uint8).reshape(-1, tensor.element_size()).flip(1)
                tensor.copy_(flipped.contiguous().view(tensor.dtype).reshape(tensor.shape))
    for tensor in tensors:
        if tensor.dtype is torch.bool and bool((tensor.view(torch.uint8) > 1).any()):
            raise InvalidArgumentError("data: BOOL elements must be 0x00 or 0x01", field="data")
