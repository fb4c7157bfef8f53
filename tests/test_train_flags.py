"""The trainer's command line: every flag in --help with its default, a flag that cannot apply
warned about, the default metrics port falling back to a free one (and a chosen one not)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradserve.client.arguments import build_parser, parse_args
from gradserve.server.app import GradientServer

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 120.0

# The flags a first parse_known_args once hid from --help (issue 24).
ONCE_HIDDEN = (
    "--transport",
    "--steps-per-request",
    "--window",
    "--data-on-server",
    "--retry-attempts",
    "--retry-max-backoff",
    "--tls-ca",
    "--tls-cert",
    "--tls-key",
    "--token-file",
    "--workers",
    "--shard-index",
    "--shard-count",
)


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        parse_args([*argv, "--help"], environ={})
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys)
    for flag in (*ONCE_HIDDEN, "--lr-schedule", "--save", "--init-from"):
        assert f"{flag} " in text, flag
    assert "--transport {stream,unary} stream:" in text
    assert "(default: stream)" in text
    assert "(default: 100)" in text  # --steps-per-request, --epochs


def test_help_shows_each_default(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser({})
    text = help_text(capsys)
    for action in parser._actions:
        if action.default in (None, False, "==SUPPRESS==") or not action.option_strings:
            continue
        if action.dest == "help":
            continue
        shown = repr(action.default) if action.default == "" else str(action.default)
        assert action.help, action.dest
        assert f"(default: {shown})" in text, action.dest


def test_help_with_a_dataset_shows_its_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "--dataset", "digits")
    assert "create (default: mlp:64-128-10)" in text
    assert "passes over the training set (default: 20)" in text


def test_flags_reach_the_config() -> None:
    config = parse_args(
        ["--window", "7", "--retry-attempts", "3", "--lr-schedule", "step:5:0.5"], environ={}
    )
    assert config.transport.window == 7
    assert config.connection.retry_attempts == 3
    assert config.schedule.lr_schedule == "step:5:0.5"
    assert config.embedded.given == ()
    assert config.metrics.port_fallback
    chosen = parse_args(["--model", "mlp:1-4-1", "--metrics-port", "9100"], environ={})
    assert chosen.embedded.given == ("--model",)
    assert (chosen.metrics.port, chosen.metrics.port_fallback) == (9100, False)
    from_env = parse_args([], environ={"GRADSERVE_TRAIN_METRICS_PORT": "9101"})
    assert (from_env.metrics.port, from_env.metrics.port_fallback) == (9101, False)


@pytest.mark.parametrize("schedule", ["linear", "step", "step:0", "cosine:1:2:3", "warmup:2:5"])
def test_a_bad_schedule_is_a_usage_error(schedule: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--lr-schedule", schedule], environ={})
    assert exited.value.code == 2
    assert "--lr-schedule" in capsys.readouterr().err


# -- as a user runs it ---------------------------------------------------------------------


def train(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("GRADSERVE_")
    }
    return subprocess.run(
        [sys.executable, "client/train.py", *args],
        cwd=ROOT,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


@contextlib.contextmanager
def default_metrics_port_taken() -> Iterator[None]:
    """Port 8000 on loopback held by the test (or by someone else already: taken either way)."""
    with socket.socket() as holder:
        with contextlib.suppress(OSError):
            holder.bind(("127.0.0.1", 8000))
            holder.listen()
        yield


def test_taken_default_metrics_port_falls_back_with_one_line() -> None:
    with default_metrics_port_taken():
        done = train("--epochs", "1")
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "port 8000 is taken" in line]
    assert len(notices) == 1, done.stderr
    port = int(notices[0].split("/metrics on 127.0.0.1:")[1].split()[0])
    assert port not in (0, 8000)


def test_taken_chosen_metrics_port_stays_an_error() -> None:
    with default_metrics_port_taken():
        done = train("--epochs", "1", env={"GRADSERVE_TRAIN_METRICS_PORT": "8000"})
    assert done.returncode == 2
    assert "cannot serve /metrics on 127.0.0.1:8000" in done.stderr


def test_model_flags_against_a_remote_default_run_are_warned(server: GradientServer) -> None:
    done = train(
        "--server",
        server.address,
        "--model",
        "mlp:1-4-1",
        "--optimizer",
        "adam",
        "--epochs",
        "1",
        "--metrics-port",
        "0",
    )
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "gradserve-train: warning: --model, --optimizer not applied: the server's default run "
        "has its own model, optimizer and loss (--run NAME creates a run with yours)"
    ]
    # With --run they describe the run to create: nothing to warn about.
    done = train(
        "--server",
        server.address,
        "--model",
        "mlp:1-4-1",
        "--loss",
        "mse",
        "--run",
        "r",
        "--epochs",
        "1",
        "--metrics-port",
        "0",
    )
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
