"""The trainer checks its data against the server's model before sending anything: values a
float32 model cannot hold, class indices below 0, files that are not UTF-8, and an empty
--server end the run with exit 2 and one line naming the row and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradserve.client import train


def write(path: Path, text: bytes) -> Path:
    path.write_bytes(text)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = train.main(["--metrics-port", "0", "--progress", "never", "--epochs", "1", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("stream", [False, True], ids=["loaded", "streamed"])
@pytest.mark.parametrize(
    ("model", "content", "message"),
    [
        ("linear", b"x,y\n1,2\n1e300,3\n", "line 3 column 'x': 1e300 is out of range"),
        ("linear", b"x,y\n1,-4e38\n", "line 2 column 'y': -4e38 is out of range"),
        ("mlp:1-4-3", b"x,y\n1,2\n2,-1\n", "line 3 column 'y': -1 is not a class index"),
        ("mlp:1-4-3", b"x,y\n1,2.5\n", "line 2 column 'y': 2.5 is not a whole number"),
        ("linear", b"x,y\n1,2\n\xff\xfe,2\n", "line 3: not UTF-8 text"),
    ],
    ids=["float32-overflow", "target-overflow", "negative-class", "fraction-class", "not-utf8"],
)
def test_bad_values_are_named_on_the_client(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    content: bytes,
    message: str,
    stream: bool,
) -> None:
    path = write(tmp_path / "data.csv", content)
    code, err = run(capsys, "--csv", str(path), "--model", model, *(["--stream-csv"] * stream))
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_empty_server_address_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        train.main(["--server", ""])
    assert caught.value.code == 2
    assert "--server: empty; expected HOST:PORT" in capsys.readouterr().err
