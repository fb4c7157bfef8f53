"""A DatasetPass resolved into the store's steps: checked against the dataset it names and
the request's bounds before anything is gathered, then one gather and views.

The bounds are those the same steps sent as TrainRequest.steps would meet: at most
MAX_BATCHES_PER_REQUEST steps, a batch within --max-batch-elements per tensor, and no more
gathered bytes than one message could carry (--max-message-bytes). Indices gather the whole
order with one index_select (the values a client's `inputs[indices]` sends inline), cut into
consecutive views; a contiguous range is views of the stored tensors. The pass's request-id
fingerprint is its descriptor with the indices as one tensor, never the gathered bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

import torch

from gradserve.errors import ResourceExhaustedError
from gradserve.pass_types import DatasetPass
from gradserve.types import TrainStep

from ..store.pass_runs import PassSteps
from ..store.train_steps import MAX_BATCHES_PER_REQUEST
from .batches import check_range, checked_indices, selected
from .registry import DatasetRegistry

FIELD = "dataset_pass"


def expand_pass(
    registry: DatasetRegistry,
    owner: Hashable,
    descriptor: DatasetPass,
    max_elements: int,
    max_bytes: int,
) -> PassSteps:
    """The pass's steps; the first field that does not fit raises, before any gather."""
    stored = registry.get(owner, descriptor.dataset, f"{FIELD}.dataset")
    count_field = f"{FIELD}.indices" if descriptor.indices else f"{FIELD}.count"
    index = checked_indices(descriptor.indices, stored, FIELD) if descriptor.indices else None
    if index is None:
        check_range(descriptor.start, descriptor.count, stored, FIELD, "a pass")
    steps, size = descriptor.steps, descriptor.batch_size
    if steps > MAX_BATCHES_PER_REQUEST:
        raise ResourceExhaustedError(
            f"{count_field}: {descriptor.samples} samples in batches of {size} are {steps} "
            f"steps, at most {MAX_BATCHES_PER_REQUEST} in one request",
            field=count_field,
        )
    largest = min(size, descriptor.samples)
    if largest * max(stored.inputs[0].numel(), stored.targets[0].numel()) > max_elements:
        raise ResourceExhaustedError(
            f"{FIELD}.batch_size: {largest} samples is over the server's limit of "
            f"{max_elements} elements per batch tensor",
            field=f"{FIELD}.batch_size",
        )
    if descriptor.samples * (stored.bytes // stored.samples) > max_bytes:
        raise ResourceExhaustedError(
            f"{count_field}: the pass's batches come to over {max_bytes} bytes "
            "(--max-message-bytes, what one inline request could carry)",
            field=count_field,
        )
    inputs, targets = selected(stored, index, descriptor.start, descriptor.count)
    pairs = zip(torch.split(inputs, size), torch.split(targets, size), strict=True)
    settings = (
        True,
        descriptor.learning_rate,
        descriptor.reduction,
        None,
        descriptor.hyperparameters,
        descriptor.max_grad_norm,
    )
    seed = descriptor.seed
    # Without the indices (fed as one tensor: a tuple is fed item by item).
    described = dataclasses.replace(descriptor, indices=())
    return PassSteps(
        steps=[
            TrainStep((pair,), *settings, seed=None if seed is None else seed + i)
            for i, pair in enumerate(pairs)
        ],
        expected_version=descriptor.expected_version,
        gradient_norms=descriptor.gradient_norms,
        fingerprint=(described,) if index is None else (described, index),
    )
