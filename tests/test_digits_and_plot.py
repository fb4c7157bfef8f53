"""--dataset digits reaches its accuracy in bounded time; --plot writes a PNG of the run."""

from __future__ import annotations

import json
import struct
import time

import pytest

from gradserve.client import train
from gradserve.client.plot import plot_data, write_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_train(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = train.main(["--metrics-port", "0", "--progress", "never", "--json", *args])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if lines else None), captured.err


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_digits_reaches_90_percent_in_a_short_run_and_plots_it(capsys, tmp_path) -> None:
    plot = tmp_path / "loss.png"
    started = time.perf_counter()
    code, summary, err = run_train(
        capsys, "--dataset", "digits", "--epochs", "6", "--plot", str(plot)
    )
    seconds = time.perf_counter() - started
    assert code == 0, err
    assert summary["model"] == "mlp:64-128-10:relu"
    assert summary["accuracy"] >= 0.90, summary["accuracies"]
    assert len(summary["accuracies"]) == 6
    assert seconds < 20
    assert "Accuracy: " in err  # printed every epoch (log_every 1 for digits)
    # 1797 samples, 20 % held out -> 1438 training samples in batches of 32 -> 45 per epoch.
    assert summary["batches"] == 6 * 45
    width, height = png_size(plot.read_bytes())
    assert (width, height) == (800, 450)


def test_plot_data_has_one_point_per_batch_and_per_epoch(tmp_path) -> None:
    data = plot_data(
        [3.0, 2.0, 1.5, 1.0, 0.8, 0.5], [2.5, 1.1, 0.65], [2.6, 1.3, 0.9], [0.5, 0.7, 0.8]
    )
    assert len(data.batch_losses) == 6
    assert [x for x, _ in data.epoch_losses] == [2.0, 4.0, 6.0]
    assert len(data.validation_losses) == len(data.accuracies) == 3
    path = tmp_path / "run.png"
    assert write_plot(data, path) is data
    assert png_size(path.read_bytes()) == (800, 450)


def test_a_remote_server_with_the_wrong_model_is_a_clear_error(make_server, capsys) -> None:
    running = make_server(model="mlp:10-4-3")
    code, _, err = run_train(capsys, "--dataset", "digits", "--server", running.address)
    assert code == 2
    assert "inputs have shape [N, 64], but the server's model mlp:10-4-3:relu takes [N, 10]" in err


@pytest.mark.parametrize(
    ("model", "loss"), [("cnn:1x8x8-10:channels=4", "cross_entropy"), ("mlp:64-16-10", "mse")]
)
def test_digits_fits_cnn_and_one_hot_models(capsys, model, loss) -> None:
    code, summary, err = run_train(
        capsys, "--dataset", "digits", "--epochs", "1", "--model", model, "--loss", loss
    )
    assert code == 0, err
    assert summary["model"].startswith(model.split(":")[0])
