"""Training data for the trainer: the seed's synthetic line, or columns of a CSV file.

Data is checked here, on the client, so a bad file fails with a message naming the row and
column before anything reaches the server.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


class DataError(ValueError):
    """The training data cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Dataset:
    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def subset(self, indices: torch.Tensor) -> Dataset:
        return Dataset(self.inputs[indices], self.targets[indices])


@dataclass(frozen=True)
class SeedData:
    """The seed tutorial's data and initial parameters, drawn in the tutorial's order."""

    dataset: Dataset
    initial_w: torch.Tensor
    initial_b: torch.Tensor


def seed_data(seed: int, samples: int = 100) -> SeedData:
    """torch.manual_seed(seed); X = rand; y = 2X + 1 + 0.1 randn; w = randn(1); b = zeros(1)."""
    torch.manual_seed(seed)
    inputs = torch.rand(samples, 1)
    targets = 2 * inputs + 1 + 0.1 * torch.randn(samples, 1)
    initial_w = torch.randn(1)
    initial_b = torch.zeros(1)
    return SeedData(Dataset(inputs, targets), initial_w, initial_b)


@dataclass(frozen=True)
class CsvColumns:
    features: tuple[str, ...]
    target: str


def read_csv(
    path: Path, features: Sequence[str] = (), target: str | None = None
) -> tuple[CsvColumns, torch.Tensor, torch.Tensor]:
    """Read numeric columns: (columns, features as float64 [N, F], target as float64 [N]).

    With a header row, columns are named; without one they are numbered from 0. By default
    the last column is the target and all others are features."""
    try:
        with path.open(newline="") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except OSError as error:
        raise DataError(f"data: cannot read {path}: {error.strerror}") from None
    if not rows:
        raise DataError(f"data: {path} is empty")
    header = rows[0] if not _is_numeric_row(rows[0]) else [str(i) for i in range(len(rows[0]))]
    body = rows[1:] if header is rows[0] else rows
    if not body:
        raise DataError(f"data: {path} has a header but no rows")
    target_name = target or header[-1]
    feature_names = tuple(features) or tuple(name for name in header if name != target_name)
    for name in (*feature_names, target_name):
        if name not in header:
            raise DataError(f"data: {path} has no column {name!r} (columns: {', '.join(header)})")
    positions = [header.index(name) for name in (*feature_names, target_name)]
    values: list[list[float]] = []
    for line, row in enumerate(body, start=2 if header is rows[0] else 1):
        if len(row) != len(header):
            raise DataError(f"data: {path} line {line}: {len(row)} fields, expected {len(header)}")
        parsed = []
        for position in positions:
            try:
                value = float(row[position])
            except ValueError:
                raise DataError(
                    f"data: {path} line {line} column {header[position]!r}: "
                    f"{row[position]!r} is not a number"
                ) from None
            if not math.isfinite(value):
                raise DataError(
                    f"data: {path} line {line} column {header[position]!r}: {row[position]} "
                    "is not a finite number"
                )
            parsed.append(value)
        values.append(parsed)
    table = torch.tensor(values, dtype=torch.float64)
    return CsvColumns(feature_names, target_name), table[:, :-1], table[:, -1]


def _is_numeric_row(row: Sequence[str]) -> bool:
    try:
        [float(value) for value in row]
    except ValueError:
        return False
    return True


def batches(
    dataset: Dataset, batch_size: int, order: torch.Tensor | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches (the last may be short), in `order` when given."""
    for start in range(0, len(dataset), batch_size):
        if order is None:
            yield (
                dataset.inputs[start : start + batch_size],
                dataset.targets[start : start + batch_size],
            )
        else:
            index = order[start : start + batch_size]
            yield dataset.inputs[index], dataset.targets[index]
