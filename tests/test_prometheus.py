"""The trainer's metrics as Prometheus sees them: a real Prometheus scrapes `python
client/train.py`, a real Pushgateway receives its push. Both are Debian's binaries
(scripts/install-prometheus-deps.sh), started here on loopback ports and stopped after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "client" / "train.py"
PROMETHEUS = shutil.which("prometheus")
PUSHGATEWAY = shutil.which("prometheus-pushgateway")
INSTALL_HINT = "run scripts/install-prometheus-deps.sh"
STARTUP_TIMEOUT = 30.0
T = TypeVar("T")

pytestmark = pytest.mark.prometheus

TRAINER_METRICS = {
    "gradserve_train_loss",
    "gradserve_train_epoch_loss",
    "gradserve_train_steps_total",
    "gradserve_train_samples_total",
    "gradserve_train_step_duration_seconds_bucket",
    "gradserve_train_step_duration_seconds_sum",
    "gradserve_train_step_duration_seconds_count",
    "gradserve_train_epoch",
    "gradserve_train_model_version",
    "process_cpu_seconds_total",
    "python_info",
}


def free_port() -> int:
    """A port that was free a moment ago. The binaries and the trainer take a port number, not
    a socket, so there is a small window in which another process could take it; on a
    loopback-only test machine that is rare and shows up as a failed start, not a wrong result."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        body: bytes = response.read()
        return body


def poll(what: str, check: Callable[[], T | None], timeout: float, process=None) -> T:
    """Call check() until it returns something other than None; bounded, polling an external
    process (there is no event to wait on), failing early when `process` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (OSError, urllib.error.URLError):
            result = None
        if result is not None:
            return result
        if process is not None and process.poll() is not None:
            stderr = process.stderr.read().decode()[-2000:] if process.stderr else ""
            pytest.fail(f"{what}: the process exited with {process.returncode}\n{stderr}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


@contextmanager
def running(args: list[str], log: Path, ready_url: str) -> Iterator[subprocess.Popen]:
    with log.open("wb") as output:
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
    try:
        poll(
            f"{args[0]} ready at {ready_url} (log: {log})",
            lambda: True if http_get(ready_url, timeout=1.0) is not None else None,
            STARTUP_TIMEOUT,
            process,
        )
        yield process
    finally:
        stop(process)


def start_trainer(*args: str, stdout: Any = subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("GRADSERVE_SERVER", "GRADSERVE_PUSHGATEWAY", "GRADSERVE_TRAIN_METRICS_PORT"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, str(TRAIN), "--json", *args],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(Prometheus URL, the port its scrape config points at for the trainer's /metrics)."""
    if PROMETHEUS is None:
        pytest.skip(f"Debian's prometheus binary is not installed; {INSTALL_HINT}")
    port, target = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 200ms\n"
        "  scrape_timeout: 200ms\n"
        "scrape_configs:\n"
        "  - job_name: gradserve_train\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target}']\n"
    )
    url = f"http://127.0.0.1:{port}"
    command = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with running(command, tmp_path / "prometheus.log", f"{url}/-/ready"):
        yield url, target


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    if PUSHGATEWAY is None:
        pytest.skip(f"Debian's prometheus-pushgateway binary is not installed; {INSTALL_HINT}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        PUSHGATEWAY,
        f"--web.listen-address=127.0.0.1:{port}",
        # Debian's default persists to /var/lib; a test keeps its pushes in memory.
        "--persistence.file=",
        "--log.level=warn",
    ]
    with running(command, tmp_path / "pushgateway.log", f"{url}/-/ready"):
        yield url


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    answer = json.loads(http_get(url))
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def raw_samples(prometheus_url: str, metric: str, run_id: str) -> list[tuple[float, float]]:
    """Every scraped sample of one series, oldest first (a range selector returns raw samples)."""
    series = query(prometheus_url, f'{metric}{{run_id="{run_id}"}}[10m]')
    if not series:
        return []
    assert len(series) == 1, series
    return [(float(t), float(v)) for t, v in series[0]["values"]]


def test_prometheus_scrapes_the_loss_falling(prometheus: tuple[str, int]) -> None:
    url, metrics_port = prometheus
    run_id = "prom-test"

    # Prometheus hands new targets to its scrape loops in batches (every few seconds), so wait
    # until the trainer's address is an active target (down, for now) before training starts.
    def target_active() -> bool | None:
        targets = json.loads(http_get(f"{url}/api/v1/targets"))["data"]["activeTargets"]
        return (
            True
            if any(t["scrapeUrl"].endswith(f":{metrics_port}/metrics") for t in targets)
            else None
        )

    poll("Prometheus picking up the scrape target", target_active, STARTUP_TIMEOUT)
    epochs = 400
    trainer = start_trainer(
        "--epochs", str(epochs),
        "--lr", "0.002",
        "--run-id", run_id,
        "--metrics-port", str(metrics_port),
        "--metrics-host", "127.0.0.1",
        # Long enough for the final scrape; the test ends it with SIGTERM once it has it.
        "--linger", "60",
        # Inline batches: as dataset passes the 4,000 steps take ~0.25 s, too fast for two
        # scrapes mid-run.
        "--data-on-server", "off",
    )  # fmt: skip
    try:
        steps = epochs * 10

        def final_values_scraped() -> bool | None:
            samples = raw_samples(url, "gradserve_train_steps_total", run_id)
            return True if samples and samples[-1][1] == steps else None

        poll("Prometheus scraping the trainer's final values", final_values_scraped, 60, trainer)
        trainer.send_signal(signal.SIGTERM)  # ends --linger early
        out, err = trainer.communicate(timeout=30)
    finally:
        stop(trainer)
    assert trainer.returncode == 0, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])

    # Before the first batch the gauge reads 0 (declared, not yet set); from then on it is
    # a batch's loss, which with noise in the data is never exactly 0.
    losses = [v for _, v in raw_samples(url, "gradserve_train_loss", run_id) if v != 0.0]
    steps_seen = [v for _, v in raw_samples(url, "gradserve_train_steps_total", run_id)]
    during = [v for v in steps_seen if 0 < v < steps]
    # Every 200 ms when idle; on a loaded 2-core machine Prometheus falls behind, so ask for
    # two scrapes mid-run (plus the final one), not one per interval.
    assert len(during) >= 2, f"scraped only {steps_seen} while training"
    assert len(losses) >= 3, losses
    assert losses[0] > losses[-1], losses
    epoch_losses = [
        v for _, v in raw_samples(url, "gradserve_train_epoch_loss", run_id) if v != 0.0
    ]
    assert epoch_losses[0] > epoch_losses[-1], epoch_losses
    assert losses[-1] == pytest.approx(summary["last_loss"], rel=1e-12)

    names = set(json.loads(http_get(f"{url}/api/v1/label/__name__/values"))["data"])
    assert names >= TRAINER_METRICS, TRAINER_METRICS - names
    # The trainer is gone, so instant queries see its series as stale: read the raw samples.
    (epoch_series,) = query(url, f'gradserve_train_epoch{{run_id="{run_id}"}}[10m]')
    assert float(epoch_series["values"][-1][1]) == epochs
    assert epoch_series["metric"]["model"] == "linear"
    assert epoch_series["metric"]["job"] == "gradserve_train"


def test_pushgateway_receives_the_final_metrics(pushgateway: str) -> None:
    run_id = "push-test"
    trainer = start_trainer(
        "--epochs", "5", "--pushgateway", pushgateway, "--metrics-port", "0", "--run-id", run_id
    )  # fmt: skip
    try:
        out, err = trainer.communicate(timeout=60)
    finally:
        stop(trainer)
    assert trainer.returncode == 0, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])

    families = {
        family.name: family
        for family in text_string_to_metric_families(http_get(f"{pushgateway}/metrics").decode())
    }
    loss = [s for s in families["gradserve_train_loss"].samples if s.labels["run_id"] == run_id]
    assert len(loss) == 1, families["gradserve_train_loss"].samples
    assert loss[0].labels["job"] == "gradserve_train"
    assert loss[0].value == pytest.approx(summary["last_loss"], rel=1e-12)
    steps = [
        s
        for s in families["gradserve_train_steps"].samples
        if s.name == "gradserve_train_steps_total" and s.labels["run_id"] == run_id
    ]
    assert [s.value for s in steps] == [50.0]
    epoch = families["gradserve_train_epoch"].samples
    assert [s.value for s in epoch if s.labels["run_id"] == run_id] == [5.0]
    versions = families["gradserve_train_model_version"].samples
    assert [s.value for s in versions if s.labels["run_id"] == run_id] == [summary["model_version"]]
    # No validation split: no validation sample at all, rather than a 0.0 that reads as real.
    for name in ("gradserve_train_validation_loss", "gradserve_train_accuracy"):
        pushed = families[name].samples if name in families else []
        assert not [s for s in pushed if s.labels.get("run_id") == run_id], name
    assert "gradserve_model_version" not in families  # the server's name, not the trainer's
