"""--workers and --shard-* runs are runs like any other: they serve the trainer's metrics on
/metrics and validate when asked. Subprocesses as a user starts them, scraped over loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gradserve.client.arguments import parse_args
from gradserve.client.config import config_from_json, config_to_json

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "client" / "train.py"
EPOCHS = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def run_and_scrape(*args: str) -> tuple[dict[str, float], str, str]:
    """Train with --linger, scrape /metrics once the last epoch is in, then end the linger."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("GRADSERVE_SERVER", "GRADSERVE_PUSHGATEWAY", "GRADSERVE_TRAIN_METRICS_PORT"):
        env.pop(name, None)
    trainer = subprocess.Popen(
        [
            *(sys.executable, str(TRAIN), "--json", "--metrics-port", str(port)),
            *("--linger", "60", "--epochs", str(EPOCHS), "--validation-split", "0.2"),
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # The summary is printed once training is over and the linger has begun.
        assert trainer.stdout is not None
        out = trainer.stdout.readline().decode()
        deadline = time.monotonic() + 30
        samples: dict[str, float] = {}
        while samples.get("gradserve_train_epoch") != EPOCHS:
            assert trainer.poll() is None, trainer.communicate()[1].decode()
            assert time.monotonic() < deadline, samples
            with contextlib.suppress(OSError, urllib.error.URLError):
                samples = scrape(port)
            time.sleep(0.05)  # polling another process's /metrics
        trainer.send_signal(signal.SIGTERM)  # ends --linger
        rest, err = trainer.communicate(timeout=30)
        out += rest.decode()
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.communicate()
    assert trainer.returncode == 0, err.decode()
    return samples, out, err.decode()


@pytest.mark.parametrize(
    "args", [("--workers", "2"), ("--shard-index", "1", "--shard-count", "2")], ids=str
)
def test_sharded_runs_serve_metrics_and_validate(args: tuple[str, ...]) -> None:
    samples, out, err = run_and_scrape(*args)
    assert samples["gradserve_train_steps_total"] > 0
    assert samples["gradserve_train_samples_total"] > 0
    assert samples["gradserve_train_model_version"] > 0
    assert 0 < samples["gradserve_train_validation_loss"] < 10
    epoch_lines = [line for line in err.splitlines() if line.startswith("Epoch")]
    assert epoch_lines and all(", Validation loss: " in line for line in epoch_lines)
    summary = json.loads(out.strip().splitlines()[-1])
    assert 0 < summary["validation_loss"] < 10


def test_help_names_the_program_as_invoked() -> None:
    script = Path(sys.executable).parent / "gradserve-train"
    if not script.exists():
        pytest.skip("no gradserve-train console script in this environment")
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith("usage: gradserve-train")
    by_path = subprocess.run(
        [sys.executable, str(TRAIN), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert by_path.stdout.startswith("usage: python client/train.py")


def test_a_config_crosses_to_a_worker_unchanged(tmp_path: Path) -> None:
    config = parse_args(
        [
            *("--csv", str(tmp_path / "d.csv"), "--features", "a,b", "--reduction", "mean"),
            *("--shuffle", "--server", "127.0.0.1:1", "--tls-ca", str(tmp_path / "ca.pem")),
        ],
        environ={},
    )
    assert config_from_json(config_to_json(config)) == config


def test_flags_land_in_their_sections() -> None:
    config = parse_args(
        ["--lr", "0.5", "--transport", "unary", "--metrics-port", "0", "--workers", "3"],
        environ={"GRADSERVE_TIMEOUT_SECONDS": "7"},
    )
    assert config.schedule.learning_rate == 0.5
    assert config.transport.kind == "unary"
    assert config.metrics.port == 0
    assert config.parallel.workers == 3
    assert config.connection.timeout_seconds == 7.0
