"""The step plan: which batches, learning rate and reduction make up step s of a run, and
the model version it must apply at. Pure: a function of the data, the schedule and the seed
(the learning rate of step s: client/lr_schedule.py).

Step s is always the same batches, so a run that resumes at step s replays exactly what an
uninterrupted run would have sent. Shuffling draws one permutation per epoch from a generator
seeded with the seed (a streamed CSV shuffles through its buffer from the same generator).
Sharding is by batch, like torch's DistributedSampler: in every epoch all shards draw the same
batch order and shard `index` of `count` takes batches index, index + count, ..., padded by
wrapping around so that every shard sends the same number of batches and sync rounds stay full.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import torch

from gradserve.types import DatasetBatch, Reduction, TrainStep

from .config import ScheduleConfig
from .data import DataError, Dataset, batches
from .lr_schedule import LearningRates
from .step_seeds import first_batch_seed

Batch = tuple[torch.Tensor, torch.Tensor]
# A batch, and the same samples named in the dataset uploaded to the server (when there is one).
Planned = tuple[Batch, DatasetBatch | None]


class BatchSource(Protocol):
    """Training data read in batches rather than held (client/csv_stream.CsvStream)."""

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[Batch]: ...


class Versioning(Enum):
    """Which model version a step's update must apply at."""

    # This trainer alone drives the model: step s at start_version + s, resumed exactly.
    EXACT = "exact"
    # One shard of a sync round: the version its gradients were computed at.
    AS_COMPUTED = "as-computed"
    # Others train the model too: whatever version it is at.
    NONE = "none"


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1


@dataclass(frozen=True)
class PlannedStep:
    number: int
    epoch: int
    batches: tuple[Batch, ...]
    learning_rate: float
    reduction: Reduction
    # The last step of its epoch (validation and epoch records follow it).
    closes_epoch: bool
    # The same batches as samples of the dataset on the server (--data-on-server); empty:
    # the batches travel inline.
    named: tuple[DatasetBatch, ...] = ()
    # The seed of the step's first batch (batch j: seed + j); None: unseeded.
    seed: int | None = None

    @property
    def samples(self) -> int:
        return sum(int(inputs.shape[0]) for inputs, _ in self.batches)

    @property
    def payload_bytes(self) -> int:
        return sum(
            inputs.numel() * inputs.element_size() + targets.numel() * targets.element_size()
            for inputs, targets in self.batches
        )

    def train_step(self, expected_version: int | None) -> TrainStep:
        if self.named:
            return TrainStep(
                (),
                True,
                self.learning_rate,
                self.reduction,
                expected_version,
                dataset_batches=self.named,
                seed=self.seed,
            )
        return TrainStep(
            self.batches, True, self.learning_rate, self.reduction, expected_version, seed=self.seed
        )


def shard_batches(batch_count: int, index: int, count: int) -> list[int]:
    """The batch positions shard `index` of `count` takes, padded by wrapping around."""
    rounds = math.ceil(batch_count / count)
    return [(step * count + index) % batch_count for step in range(rounds)]


class StepPlan:
    def __init__(
        self,
        data: Dataset | BatchSource,
        schedule: ScheduleConfig,
        seed: int,
        *,
        shard: Shard = Shard(),
        versioning: Versioning = Versioning.EXACT,
        on_server: str | None = None,
        step_seeds: bool = False,
    ) -> None:
        """`on_server`: the name of `data` uploaded to the server (a held Dataset only): each
        step then names its batches' samples, a contiguous slice or, shuffled, the indices.
        `step_seeds`: every step carries a seed drawn from `seed` (step_seeds.py)."""
        self.data = data
        self.on_server = on_server if isinstance(data, Dataset) else None
        self.schedule = schedule
        self.seed = seed
        self.shard = shard
        self.versioning = versioning
        self.step_seeds = step_seeds
        try:
            self.learning_rates = LearningRates(
                schedule.lr_schedule, schedule.learning_rate, self.total_steps
            )
        except ValueError as error:
            raise DataError(str(error)) from None

    def expected_version(self, step: PlannedStep, start_version: int) -> int | None:
        """The version step's update carries, when known before it is sent."""
        if self.versioning is Versioning.EXACT:
            return start_version + step.number
        return None

    @property
    def steps_per_epoch(self) -> int | None:
        """None for a streamed source, whose length is known only once read."""
        if not isinstance(self.data, Dataset):
            return None
        batch_count = math.ceil(len(self.data) / self.schedule.batch_size)
        if self.shard.count > 1:
            batch_count = math.ceil(batch_count / self.shard.count)
        return math.ceil(batch_count / self.schedule.accumulation_steps)

    @property
    def total_steps(self) -> int | None:
        per_epoch = self.steps_per_epoch
        return None if per_epoch is None else per_epoch * self.schedule.epochs

    def steps(self, first: int = 0) -> Iterator[PlannedStep]:
        """Every step of the run from `first` on, in order."""
        shuffler = torch.Generator().manual_seed(self.seed)
        per_epoch = self.steps_per_epoch
        number = 0
        for epoch in range(self.schedule.epochs):
            if per_epoch is not None and number + per_epoch <= first:
                # An epoch wholly before `first`: only its draw from the shuffler matters.
                if self.schedule.shuffle:
                    torch.randperm(len(self.data), generator=shuffler)  # type: ignore[arg-type]
                number += per_epoch
                continue
            for step in self._epoch(epoch, number, shuffler):
                if step.number >= first:
                    yield step
                number = step.number + 1

    def _epoch(self, epoch: int, number: int, shuffler: torch.Generator) -> Iterator[PlannedStep]:
        group = self.schedule.accumulation_steps
        pending: list[Planned] = []
        previous: tuple[Planned, ...] | None = None
        for batch in self._epoch_batches(shuffler):
            pending.append(batch)
            if len(pending) == group:
                if previous is not None:
                    yield self._step(number, epoch, previous, closes_epoch=False)
                    number += 1
                previous, pending = tuple(pending), []
        if pending:
            if previous is not None:
                yield self._step(number, epoch, previous, closes_epoch=False)
                number += 1
            previous = tuple(pending)
        if previous is not None:
            yield self._step(number, epoch, previous, closes_epoch=True)

    def _epoch_batches(self, shuffler: torch.Generator) -> Iterator[Planned]:
        shuffle = self.schedule.shuffle
        size = self.schedule.batch_size
        epoch: Iterator[Planned]
        if isinstance(self.data, Dataset):
            order = torch.randperm(len(self.data), generator=shuffler) if shuffle else None
            epoch = zip(batches(self.data, size, order), self._named(size, order), strict=True)
        else:
            epoch = (
                (batch, None) for batch in self.data.batches(size, shuffler if shuffle else None)
            )
        if self.shard.count == 1:
            yield from epoch
            return
        everything = list(epoch)
        for position in shard_batches(len(everything), self.shard.index, self.shard.count):
            yield everything[position]

    def _named(self, size: int, order: torch.Tensor | None) -> Iterator[DatasetBatch | None]:
        """The epoch's batches as samples of the dataset on the server, in batches' order."""
        total = len(self.data)  # type: ignore[arg-type]
        for start in range(0, total, size):
            if self.on_server is None:
                yield None
            elif order is None:
                yield DatasetBatch(self.on_server, start=start, count=min(size, total - start))
            else:
                yield DatasetBatch(self.on_server, tuple(order[start : start + size].tolist()))

    def _step(
        self, number: int, epoch: int, chosen: tuple[Planned, ...], *, closes_epoch: bool
    ) -> PlannedStep:
        named = tuple(name for _, name in chosen if name is not None)
        return PlannedStep(
            number=number,
            epoch=epoch,
            batches=tuple(batch for batch, _ in chosen),
            learning_rate=self.learning_rates.at(number),
            reduction=self.schedule.reduction,
            closes_epoch=closes_epoch,
            named=named if len(named) == len(chosen) else (),
            seed=self._step_seed(number),
        )

    def _step_seed(self, number: int) -> int | None:
        if not self.step_seeds:
            return None
        return first_batch_seed(self.seed, number, self.schedule.accumulation_steps)
