"""CSV data streamed from disk: the same batches as the loaded file, checked row by row."""

from __future__ import annotations

import json

import pytest
import torch

from gradserve.client import train
from gradserve.client.csv_stream import CsvStream
from gradserve.client.data import DataError, Dataset, batches, read_csv


def write_csv(path, rows, header=("a", "b", "c", "y")) -> None:
    lines = [",".join(header)] if header else []
    lines += [",".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def table(size: int, classes: int | None = None, seed: int = 0) -> list[list[float]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 3, generator=generator)
    if classes:
        y = torch.randint(0, classes, (size, 1), generator=generator).double()
    else:
        y = (x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3).double()
    return torch.cat([x.double(), y], dim=1).tolist()


@pytest.mark.parametrize("classes", [None, 3])
def test_streamed_batches_equal_the_loaded_file(tmp_path, classes) -> None:
    path = tmp_path / "data.csv"
    write_csv(path, table(23, classes))
    target_dtype = torch.int64 if classes else torch.float32
    stream = CsvStream(path, target_dtype=target_dtype)
    _, features, target = read_csv(path)
    targets = target.to(target_dtype) if classes else target.float().reshape(-1, 1)
    loaded = Dataset(features.float(), targets)
    streamed = list(stream.batches(5))
    expected = list(batches(loaded, 5))
    assert [len(x) for x, _ in streamed] == [5, 5, 5, 5, 3]
    for (x, y), (ex, ey) in zip(streamed, expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_shuffle_buffer_yields_every_row_once_and_reorders(tmp_path) -> None:
    path = tmp_path / "data.csv"
    write_csv(path, [[i, 0, 0, i] for i in range(50)])
    stream = CsvStream(path, shuffle_buffer=8)
    generator = torch.Generator().manual_seed(0)
    order = [int(y) for _, ys in stream.batches(7, generator) for y in ys.flatten()]
    assert sorted(order) == list(range(50))
    assert order != list(range(50))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1, 2, "nan", 4], "line 4 column 'c': nan is not a finite number"),
        ([1, "x", 3, 4], "line 4 column 'b': 'x' is not a number"),
        ([1, 2, 3], "line 4: 3 fields, expected 4"),
    ],
)
def test_a_bad_row_is_named_when_it_is_reached(tmp_path, row, message) -> None:
    path = tmp_path / "data.csv"
    write_csv(path, [[1, 2, 3, 4], [5, 6, 7, 8], row])
    stream = CsvStream(path)
    with pytest.raises(DataError, match=message):
        list(stream.batches(2))


def run_train(capsys, *args: str) -> dict:
    code = train.main(["--metrics-port", "0", "--progress", "never", "--json", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("model", "classes"),
    [("mlp:3-4-1:tanh", None), ("mlp:3-4-3", 3)],
    ids=["regression", "classes"],
)
def test_training_on_a_streamed_csv_is_bitwise_training_on_the_loaded_one(
    tmp_path, capsys, model, classes
) -> None:
    path = tmp_path / "data.csv"
    write_csv(path, table(40, classes))
    common = ["--csv", str(path), "--model", model, "--epochs", "3", "--batch-size", "8"]
    if classes is None:
        common += ["--loss", "mse"]
    loaded = run_train(capsys, *common, "--transport", "unary")
    streamed = run_train(capsys, *common, "--stream-csv")
    assert streamed["epoch_losses"] == loaded["epoch_losses"]
    assert streamed["parameters"] == loaded["parameters"]
    assert streamed["batches"] == 3 * 5


def test_streaming_refuses_a_validation_split(tmp_path, capsys) -> None:
    path = tmp_path / "data.csv"
    write_csv(path, table(10))
    code = train.main(
        [
            "--metrics-port",
            "0",
            "--csv",
            str(path),
            "--model",
            "mlp:3-4-1",
            "--loss",
            "mse",
            "--stream-csv",
            "--validation-split",
            "0.2",
        ]
    )
    assert code == 2
    assert "--validation-split needs the data in memory" in capsys.readouterr().err
