"""A CSV file read from disk a batch at a time, for files too large to load (`--stream-csv`).

Every epoch reads the file again from the top; memory holds one batch (or, with shuffling, a
bounded buffer of rows). Rows are checked as read_csv checks them, with the same messages, so a
bad row fails the run when it is reached (possibly after some batches were sent).

Shuffling is approximate: a buffer of `shuffle_buffer` rows, each batch drawn at random from it
(what tf.data's shuffle(buffer_size) does). With a buffer at least the file's size it is a full
shuffle; with a smaller one rows move at most about a buffer's length from where they were.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data import DataError, parse_value, read_rows

if TYPE_CHECKING:
    from gradserve.types import ModelInfo

    from .config import TrainConfig

# Files larger than this are streamed even without --stream-csv.
STREAM_ABOVE_BYTES = 64 * 2**20

Row = tuple[list[float], float]


class CsvStream:
    """Batches (inputs [B, F] float32-or-model-dtype, targets) from a CSV file, re-read per epoch.

    `class_targets`: integer class indices (int64 [B]); otherwise float targets [B, 1]."""

    def __init__(
        self,
        path: Path,
        features: Sequence[str] = (),
        target: str | None = None,
        *,
        input_dtype: torch.dtype = torch.float32,
        target_dtype: torch.dtype = torch.float32,
        shuffle_buffer: int = 10_000,
    ) -> None:
        self.path = path
        self.input_dtype = input_dtype
        self.target_dtype = target_dtype
        self.shuffle_buffer = shuffle_buffer
        first = next(self._rows(), None)
        if first is None:
            raise DataError(f"data: {path} is empty")
        self._has_header = not _is_numeric_row(first[1])
        self.header = list(first[1]) if self._has_header else [str(i) for i in range(len(first[1]))]
        self.target = target or self.header[-1]
        self.features = tuple(features) or tuple(n for n in self.header if n != self.target)
        for name in (*self.features, self.target):
            if name not in self.header:
                raise DataError(
                    f"data: {path} has no column {name!r} (columns: {', '.join(self.header)})"
                )
        self._positions = [self.header.index(name) for name in (*self.features, self.target)]

    @property
    def class_targets(self) -> bool:
        return not self.target_dtype.is_floating_point

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        return read_rows(self.path)

    def _parsed(self) -> Iterator[Row]:
        rows = self._rows()
        if self._has_header:
            next(rows, None)
        any_rows = False
        for line, row in rows:
            any_rows = True
            yield self._parse(line, row)
        if not any_rows:
            raise DataError(f"data: {self.path} has a header but no rows")

    def _parse(self, line: int, row: list[str]) -> Row:
        if len(row) != len(self.header):
            raise DataError(
                f"data: {self.path} line {line}: {len(row)} fields, expected {len(self.header)}"
            )
        dtypes = [self.input_dtype] * len(self.features) + [self.target_dtype]
        values = [
            parse_value(row[position], f"{self.path} line {line} column {self.header[position]!r}",
                        dtype)
            for position, dtype in zip(self._positions, dtypes, strict=True)
        ]  # fmt: skip
        return values[:-1], values[-1]

    def _batch(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.tensor([features for features, _ in rows], dtype=torch.float64)
        targets = torch.tensor([target for _, target in rows], dtype=torch.float64)
        if self.class_targets:
            return inputs.to(self.input_dtype), targets.to(self.target_dtype)
        return inputs.to(self.input_dtype), targets.to(self.target_dtype).reshape(-1, 1)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of batches (the last may be short); shuffled through the buffer when a
        generator is given, else in file order."""
        rows = self._parsed() if generator is None else self._shuffled(generator)
        pending: list[Row] = []
        for row in rows:
            pending.append(row)
            if len(pending) == batch_size:
                yield self._batch(pending)
                pending = []
        if pending:
            yield self._batch(pending)

    def _shuffled(self, generator: torch.Generator) -> Iterator[Row]:
        buffer: list[Row] = []
        for row in self._parsed():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(row)
                continue
            index = int(torch.randint(len(buffer), (1,), generator=generator))
            yield buffer[index]
            buffer[index] = row
        order = torch.randperm(len(buffer), generator=generator).tolist()
        for index in order:
            yield buffer[index]

    def feature_count(self) -> int:
        return len(self.features)


def _is_numeric_row(row: Sequence[str]) -> bool:
    try:
        [float(value) for value in row]
    except ValueError:
        return False
    return True


def should_stream(path: Path, forced: bool) -> bool:
    """Stream when asked, or when the file is larger than STREAM_ABOVE_BYTES."""
    if forced:
        return True
    try:
        return path.stat().st_size > STREAM_ABOVE_BYTES
    except OSError:
        return False


def open_for_model(config: TrainConfig, info: ModelInfo) -> CsvStream:
    """A stream of config.data.csv typed for the server's model; refuses options that need the whole
    file in memory."""
    assert config.data.csv is not None
    needs_memory = {
        "--validation-split": config.data.validation_split > 0,
        "--show-graph/--graph-dot": config.output.show_graph or config.output.graph_dot is not None,
    }
    for flag, given in needs_memory.items():
        if given:
            raise DataError(
                f"data: {flag} needs the data in memory; it cannot be used with a streamed CSV"
            )
    stream = CsvStream(
        config.data.csv,
        config.data.features,
        config.data.target,
        input_dtype=info.input.dtype,
        target_dtype=info.target.dtype,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    if len(info.input.shape) != 2 or info.input.shape[1] != stream.feature_count():
        raise DataError(
            f"data: {config.data.csv} has {stream.feature_count()} feature columns, but the server's "
            f"model {info.model_spec} takes inputs of shape {list(info.input.shape)}"
        )
    target_sample = tuple(info.target.shape[1:])
    if target_sample not in ((), (1,)) or (target_sample == ()) != stream.class_targets:
        raise DataError(
            f"data: {config.data.csv} has one target column, but the server's model "
            f"{info.model_spec} (loss {info.loss}) takes targets of shape {list(info.target.shape)}"
        )
    return stream
