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
    path: Path,
    features: Sequence[str] = (),
    target: str | None = None,
    *,
    input_dtype: torch.dtype | None = None,
    target_dtype: torch.dtype | None = None,
) -> tuple[CsvColumns, torch.Tensor, torch.Tensor]:
    """Read numeric columns: (columns, features as float64 [N, F], target as float64 [N]).

    With a header row, columns are named; without one they are numbered from 0. By default
    the last column is the target and all others are features. Given the model's dtypes, every
    value is checked to fit them (see parse_value)."""
    rows = list(read_rows(path))
    if not rows:
        raise DataError(f"data: {path} is empty")
    first = rows[0][1]
    header = first if not _is_numeric_row(first) else [str(i) for i in range(len(first))]
    body = rows[1:] if header is first else rows
    if not body:
        raise DataError(f"data: {path} has a header but no rows")
    target_name = target or header[-1]
    feature_names = tuple(features) or tuple(name for name in header if name != target_name)
    for name in (*feature_names, target_name):
        if name not in header:
            raise DataError(f"data: {path} has no column {name!r} (columns: {', '.join(header)})")
    positions = [header.index(name) for name in (*feature_names, target_name)]
    dtypes = [input_dtype] * len(feature_names) + [target_dtype]
    values: list[list[float]] = []
    for line, row in body:
        if len(row) != len(header):
            raise DataError(f"data: {path} line {line}: {len(row)} fields, expected {len(header)}")
        values.append(
            [
                parse_value(row[position], f"{path} line {line} column {header[position]!r}", dtype)
                for position, dtype in zip(positions, dtypes, strict=True)
            ]
        )
    table = torch.tensor(values, dtype=torch.float64)
    return CsvColumns(feature_names, target_name), table[:, :-1], table[:, -1]


def read_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of the non-empty rows of a UTF-8 CSV file."""
    line = 0
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                if row:
                    yield line, row
    except OSError as error:
        raise DataError(f"data: cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"data: {path} line {_first_non_utf8_line(path)}: not UTF-8 text; "
                        "save the file as UTF-8") from None  # fmt: skip
    except csv.Error as error:
        raise DataError(f"data: {path} line {line + 1}: {error}") from None


def _first_non_utf8_line(path: Path) -> int:
    # The decoder reads ahead in blocks, so the reader's line count is not where it failed.
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def parse_value(text: str, where: str, dtype: torch.dtype | None = None) -> float:
    """One CSV cell as a number that the model's dtype can hold; `where` names the file, line
    and column for the message. Integer dtypes take class indices: whole numbers >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"data: {where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"data: {where}: {text} is not a finite number")
    if dtype is None:
        return value
    if dtype.is_floating_point:
        largest = torch.finfo(dtype).max
        if abs(value) > largest:
            raise DataError(
                f"data: {where}: {text} is out of range for the model's {dtype} "
                f"(largest magnitude {largest:.7g})"
            )
    elif value != round(value):
        raise DataError(
            f"data: {where}: {text} is not a whole number; the server's model takes class indices"
        )
    elif value < 0 or value > torch.iinfo(dtype).max:
        raise DataError(f"data: {where}: {text} is not a class index (a whole number >= 0)")
    return value


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
