"""A window of planned steps sent as one DatasetPass, when it can be one (docs/datasets.md).

The stream transport (client/transport_stream.py) packs steps into Train requests. When every
step of a request names one batch of the dataset on the server, with the same learning rate
and reduction, and the batches have one size (the last may be smaller, as the plan cuts an
epoch's last batch), the request is sent as a DatasetPass: the samples in order (a contiguous
range, or the indices one after another, several epochs' permutations included) and the batch
size, instead of one TrainStep per batch. The server makes the same steps of them, so the
parameters and the losses are bitwise those of the steps.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradserve.pass_types import DatasetPass

from .plan import PlannedStep


def one_batch_size(step: PlannedStep) -> int | None:
    """The samples of a step that names exactly one batch on the server, else None."""
    if len(step.named) != 1 or len(step.batches) != 1:
        return None
    named = step.named[0]
    return len(named.indices) if named.indices else named.count


def as_pass(steps: Sequence[PlannedStep], expected_version: int | None) -> DatasetPass | None:
    """`steps` as one pass whose first update applies at `expected_version`, or None when
    they are not one (then they go as steps)."""
    if not steps:
        return None
    first = steps[0]
    size = one_batch_size(first)
    if size is None:
        return None
    dataset = first.named[0].dataset
    contiguous = not first.named[0].indices
    end = first.named[0].start
    for position, step in enumerate(steps):
        samples = one_batch_size(step)
        if (
            samples is None
            or step.named[0].dataset != dataset
            or step.learning_rate != first.learning_rate
            or step.reduction is not first.reduction
            or step.seed != (None if first.seed is None else first.seed + position)
            or samples > size
            or (samples < size and position != len(steps) - 1)
        ):
            return None
        named = step.named[0]
        contiguous = contiguous and not named.indices and named.start == end
        end = named.start + named.count
    indices: list[int] = []
    if not contiguous:
        for step in steps:
            named = step.named[0]
            indices.extend(named.indices or range(named.start, named.start + named.count))
    start = first.named[0].start
    return DatasetPass(
        dataset,
        size,
        first.learning_rate,
        indices=tuple(indices),
        start=0 if indices else start,
        count=0 if indices else end - start,
        reduction=first.reduction,
        expected_version=expected_version,
        seed=first.seed,
    )
