"""How `gradserve` answers: one JSON document with --json, else an aligned table or a line."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TextIO

import torch


@dataclass(frozen=True)
class Answer:
    """What a command found or did: `data` for --json; for people, `rows` under `columns`
    (a table) or else `line`."""

    data: Any
    columns: tuple[str, ...] = ()
    rows: Sequence[Sequence[object]] = ()
    line: str = ""


def plain(value: Any) -> Any:
    """`value` as JSON can hold it: dataclasses as objects, dtypes and enums by name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: plain(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, torch.Size)):
        return [plain(item) for item in value]
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, Enum):
        return value.value
    return value


def run_label(run: str) -> str:
    """How a table shows a run: the default run's name is empty."""
    return run or "(default)"


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(columns)]
    numeric = [
        bool(rows) and all(isinstance(row[i], (int, float)) for row in rows)
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        padded = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(list(columns)), *(line(row) for row in cells)])


def write_answer(answer: Answer, as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps(plain(answer.data)), file=out)
    elif answer.columns:
        print(table(answer.columns, answer.rows), file=out)
    elif answer.line:
        print(answer.line, file=out)
