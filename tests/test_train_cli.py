"""`python client/train.py` as a user runs it: a subprocess, its exit code, its output.

The oracle is the seed tutorial's loop run locally in the test (same seed, same data, same
arithmetic), so "bitwise equal" means torch.equal on float32 values.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gradserve.server.app import GradientServer

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "client" / "train.py"
RUN_TIMEOUT = 60.0


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def summary(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


def train(*args: str, **extra_env: str) -> Run:
    # /metrics off by default: a fixed port (8000) could be taken on a CI machine. Tests that
    # want it pass --metrics-port themselves.
    env = {**os.environ, "GRADSERVE_TRAIN_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"}
    # gRPC's logging as a user gets it by default: the trainer's own GRPC_VERBOSITY (ERROR), so
    # a line of gRPC's on stderr is a real error, not a shutdown notice of a busy machine.
    for name in ("GRADSERVE_SERVER", "GRADSERVE_PUSHGATEWAY", "GRPC_VERBOSITY", "GRPC_TRACE"):
        env.pop(name, None)
    env.update(extra_env)
    done = subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    # Decoded by hand: text=True would turn the progress bar's "\r" into "\n".
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


@dataclass
class LocalRun:
    w: torch.Tensor
    b: torch.Tensor
    lines: list[str]
    epoch_losses: list[float]


def seed_loop(
    *,
    seed: int = 0,
    epochs: int = 100,
    batch_size: int = 10,
    learning_rate: float = 0.01,
    accumulation_steps: int = 1,
    reduction: str = "sum",
    shuffle: bool = False,
) -> LocalRun:
    """The seed's loop, locally; k > 1 backward()s accumulate into .grad before one update,
    divided by the number of batches for "mean"; --shuffle draws a permutation per epoch from
    a generator seeded with the seed."""
    torch.manual_seed(seed)
    X = torch.rand(100, 1)
    y = 2 * X + 1 + 0.1 * torch.randn(100, 1)
    w = torch.randn(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    shuffler = torch.Generator().manual_seed(seed)
    lines, epoch_losses = [], []

    def update(pending: int) -> None:
        with torch.no_grad():
            for parameter in (w, b):
                if reduction == "mean" and pending > 1:
                    parameter.grad /= pending
                parameter.sub_(learning_rate * parameter.grad)  # the seed's `-=`
                parameter.grad.zero_()

    for epoch in range(epochs):
        order = torch.randperm(100, generator=shuffler) if shuffle else torch.arange(100)
        losses, pending = [], 0
        for i in range(0, 100, batch_size):
            index = order[i : i + batch_size]
            X_batch, y_batch = (
                (X[index], y[index]) if shuffle else (X[i : i + batch_size], y[i : i + batch_size])
            )
            loss = ((w * X_batch + b - y_batch) ** 2).mean()
            loss.backward()
            losses.append(loss.item())
            pending += 1
            if pending == accumulation_steps:
                update(pending)
                pending = 0
        if pending:
            update(pending)
        epoch_losses.append(sum(losses) / len(losses))
        if epoch % 10 == 0:
            lines.append(f"Epoch {epoch}, Loss: {loss.item():.4f}")
    lines.append(f"Trained w: {w.item():.3f}, b: {b.item():.3f}")
    return LocalRun(w.detach(), b.detach(), lines, epoch_losses)


def assert_parameters_equal(summary: dict, local: LocalRun) -> None:
    parameters = summary["parameters"]
    assert torch.equal(torch.tensor(parameters["w"], dtype=torch.float32), local.w), (
        parameters,
        local.w,
        local.b,
    )
    assert torch.equal(torch.tensor(parameters["b"], dtype=torch.float32), local.b)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.fixture(scope="module")
def seed_run() -> LocalRun:
    return seed_loop()


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# -- the default run -----------------------------------------------------------------------


def test_default_run_prints_the_seed_lines(seed_run: LocalRun) -> None:
    done = train()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == seed_run.lines
    assert [line.split(",")[0] for line in lines[:-1]] == [f"Epoch {e}" for e in range(0, 100, 10)]
    assert lines[-1].startswith("Trained w: ")
    # Piped, not a terminal: no progress bar anywhere.
    assert "\r" not in done.stdout + done.stderr
    assert "epochs  loss" not in done.stderr


def test_default_run_json_is_bitwise_the_seed_loop(seed_run: LocalRun) -> None:
    done = train("--json")
    assert done.returncode == 0, done.stderr
    summary = done.summary()
    assert_parameters_equal(summary, seed_run)
    # The human lines move to stderr so stdout is only the JSON.
    assert done.stderr.splitlines() == seed_run.lines
    assert len(done.stdout.strip().splitlines()) == 1
    assert (summary["epochs"], summary["steps"], summary["batches"]) == (100, 1000, 1000)
    assert summary["model_version"] == 1001  # SetParameters (seed init) + 1000 updates
    assert summary["epoch_losses"] == seed_run.epoch_losses
    assert summary["server"].startswith("embedded 127.0.0.1:")


def test_grpc_core_info_lines_stay_out_of_the_output_unless_asked_for() -> None:
    """GRPC_TRACE=api makes gRPC core log every API call at INFO: what a server's GOAWAY at
    shutdown also logs. The trainer's default level (ERROR) keeps them all out of stderr; a level
    the user set is theirs."""
    quiet = train("--epochs", "1", "--json", GRPC_TRACE="api")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.splitlines() == seed_loop(epochs=1).lines
    chosen = train("--epochs", "1", GRPC_TRACE="api", GRPC_VERBOSITY="INFO")
    assert chosen.returncode == 0, chosen.stderr
    assert "grpc_init" in chosen.stdout + chosen.stderr


def test_remote_server(server: GradientServer) -> None:
    done = train("--server", server.address, "--epochs", "3", "--json", "--progress", "always")
    assert done.returncode == 0, done.stderr
    summary = done.summary()
    assert summary["server"] == server.address
    assert_parameters_equal(summary, seed_loop(epochs=3))
    assert server.store.version == 31
    # Asked for explicitly, the bar is drawn on stderr even when piped.
    assert "\r[" in done.stderr
    assert "3/3 epochs" in done.stderr


# -- failures: exit code and one line ------------------------------------------------------


def test_unreachable_server_exits_3() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Closed now; another process taking the port in the next second is unlikely on loopback.
    done = train("--server", f"127.0.0.1:{port}", "--connect-timeout", "0.5")
    assert done.returncode == 3, done.stderr
    line = one_line(done.stderr)
    assert "cannot reach the server" in line
    assert f"127.0.0.1:{port}" in line
    assert done.stdout == ""


def test_wrong_data_shape_exits_2(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "two.csv", "x1,x2,y", ["0.1,0.2,1.3", "0.4,0.5,1.9", "0.7,0.8,2.5"])
    done = train("--csv", str(data), "--epochs", "1")
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert "inputs have shape [N, 2]" in line
    assert "[N, 1]" in line


def test_nan_in_csv_exits_2_naming_line_and_column(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "nan.csv", "x,y", ["0.1,1.2", "0.5,nan", "0.9,2.8"])
    done = train("--csv", str(data), "--epochs", "1")
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert "line 3" in line
    assert "column 'y'" in line
    assert str(data) in line


def test_divergence_exits_1() -> None:
    done = train("--lr", "1e30", "--epochs", "5")
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr)
    assert "diverged" in line
    assert "Trained" not in done.stdout


# -- options -------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_accumulation_matches_local_loop(reduction: str) -> None:
    # 10 batches per epoch in groups of 3: 3 + 3 + 3 + a last update of 1.
    done = train(
        "--accumulation-steps",
        "3",
        "--reduction",
        reduction,
        "--epochs",
        "4",
        "--lr",
        "0.05",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    summary = done.summary()
    local = seed_loop(epochs=4, learning_rate=0.05, accumulation_steps=3, reduction=reduction)
    assert_parameters_equal(summary, local)
    assert (summary["steps"], summary["batches"]) == (16, 40)


def test_shuffle_is_deterministic_from_the_seed() -> None:
    done = train("--shuffle", "--seed", "3", "--epochs", "4", "--json")
    assert done.returncode == 0, done.stderr
    local = seed_loop(seed=3, epochs=4, shuffle=True)
    assert_parameters_equal(done.summary(), local)
    unshuffled = seed_loop(seed=3, epochs=4)
    assert not torch.equal(local.w, unshuffled.w)  # the order did change something


def test_validation_split_prints_validation_loss() -> None:
    done = train("--validation-split", "0.2", "--epochs", "11", "--json")
    assert done.returncode == 0, done.stderr
    epoch_lines = [line for line in done.stderr.splitlines() if line.startswith("Epoch")]
    assert [line.split(",")[0] for line in epoch_lines] == ["Epoch 0", "Epoch 10"]
    assert all(", Validation loss: " in line for line in epoch_lines)
    summary = done.summary()
    # 80 training samples in batches of 10; the validation loss is a real, finite number.
    assert summary["batches"] == 11 * 8
    assert 0 < summary["validation_loss"] < 1
    assert epoch_lines[-1].endswith(f"Validation loss: {summary['validation_loss']:.4f}")


def test_busy_metrics_port_exits_2_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = train("--metrics-port", str(port), "--epochs", "1")
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert f"/metrics on 127.0.0.1:{port}" in line
    assert "--metrics-port" in line


def test_unreachable_pushgateway_is_one_line_naming_it() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    done = train("--pushgateway", url, "--epochs", "1")
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith(
        f"gradserve-train: cannot push to the Pushgateway at {url}: "
    )
