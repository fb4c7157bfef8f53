"""`python client/train.py --workers N`: N trainers on one model, each on its shard.

This process trains shard 0 itself, like any other run (metrics, epoch lines, validation),
and starts N - 1 children for the other shards (client/plan.py says how batches are sharded).
With no --server the run's embedded server is in sync mode with N * accumulation_steps
contributions per update, so N workers with batch size B train exactly as one worker with
batch size N * B (mean over the batches). Children get their configuration as JSON in an
environment variable and report as one JSON line: no pickle crosses the process boundary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from typing import Any

from gradserve.errors import GradserveError
from gradserve.types import ModelInfo

from .config import TrainConfig, config_from_json, config_to_json
from .connection import connect
from .gradient_client import GradientClient
from .metrics import TrainMetrics
from .recorder import Recorder, TrainSummary
from .session import run_training
from .training_data import load_data

ENV_WORKER_CONFIG = "GRADSERVE_WORKER_CONFIG"


def shard_report(config: TrainConfig, summary: TrainSummary) -> dict[str, Any]:
    return {
        "shard_index": config.parallel.shard_index,
        "shard_count": config.parallel.shard_count,
        "batches": summary.batches,
        "steps": summary.steps,
        "model_version": summary.model_version,
        "last_loss": summary.last_loss if summary.batches else math.nan,
        "seconds": summary.seconds,
        "validation_loss": summary.validation_loss,
        "accuracy": summary.accuracy,
    }


def shard_line(report: dict[str, Any]) -> str:
    return (
        f"shard {report['shard_index']}/{report['shard_count']}: {report['batches']} batches, "
        f"{report['steps']} updates, last loss {report['last_loss']:.4f}, "
        f"model version {report['model_version']}"
    )


def run_workers(
    client: GradientClient, config: TrainConfig, info: ModelInfo, recorder: Recorder
) -> tuple[TrainSummary, list[dict[str, Any]]]:
    """Shard 0 here, shards 1..N-1 in children; (shard 0's summary, every shard's report)."""
    workers = config.parallel.workers
    shard_zero = _shard(config, client.target, 0)
    # The initial parameters are set before any child starts (setting them later would drop
    # gradients a child has already sent).
    _, initial = load_data(config, info)
    if initial:
        client.set_parameters(initial)
    children = [_spawn(_shard(config, client.target, index)) for index in range(1, workers)]
    try:
        summary = run_training(client, shard_zero, info, recorder, set_initial=False)
    finally:
        reports, failed = _collect(children)
    if failed:
        raise GradserveError("; ".join(failed))
    return summary, [shard_report(shard_zero, summary), *reports]


def _shard(config: TrainConfig, server: str, index: int) -> TrainConfig:
    parallel = dataclasses.replace(
        config.parallel, workers=1, shard_index=index, shard_count=config.parallel.workers
    )
    if index == 0:
        return dataclasses.replace(config, parallel=parallel)
    return dataclasses.replace(
        config,
        parallel=parallel,
        connection=dataclasses.replace(config.connection, server=server),
        data=dataclasses.replace(config.data, init="server"),
        metrics=dataclasses.replace(config.metrics, port=0, pushgateway=None, linger_seconds=0),
        output=dataclasses.replace(config.output, json=True, progress="never", epoch_lines=False),
    )


def _spawn(config: TrainConfig) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gradserve.client.workers"],
        env={**os.environ, ENV_WORKER_CONFIG: config_to_json(config)},
        stdout=subprocess.PIPE,
        text=True,
    )


def _collect(children: list[subprocess.Popen[str]]) -> tuple[list[dict[str, Any]], list[str]]:
    reports, failed = [], []
    for index, child in enumerate(children, start=1):
        stdout, _ = child.communicate()
        if child.returncode != 0:
            failed.append(f"worker {index} exited with {child.returncode}")
            continue
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    return reports, failed


def main() -> int:
    """A child of --workers: one shard, its report as one JSON line on stdout (its parent
    validates, prints and serves the metrics)."""
    config = config_from_json(os.environ[ENV_WORKER_CONFIG])
    recorder = Recorder(TrainMetrics(config.metrics.run_id, config.embedded.model))
    with connect(config) as (client, _):
        info = client.model_info()
        summary = run_training(client, config, info, recorder, validate=False, set_initial=False)
    print(json.dumps(shard_report(config, summary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
