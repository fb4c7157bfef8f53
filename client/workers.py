"""`python client/train.py --workers N`: N trainer processes on one model, each on its shard.

Shards are by batch: in every epoch all workers draw the same (seeded) batch order, and worker
`index` of `count` takes batches index, index + count, index + 2 * count, ... Like torch's
DistributedSampler, shards are padded to equal length by wrapping around to the first batches,
so every worker sends the same number of batches per epoch and sync rounds stay full.

With no --server, the parent starts an embedded server in sync mode with
N * accumulation_steps contributions per update, so N workers with batch size B train exactly
as one worker with batch size N * B (mean over the batches). A single process with
--shard-index/--shard-count (containers: GRADSERVE_SHARD_INDEX, GRADSERVE_SHARD_COUNT) runs one
shard against --server. Children get their configuration as JSON in an environment variable
and report as one JSON line: no pickle crosses the process boundary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from gradserve.client.config import TrainConfig
from gradserve.client.data import Dataset, batches
from gradserve.client.gradient_client import GradientClient
from gradserve.errors import GradserveError
from gradserve.server.app import create_server
from gradserve.server.config import ServerConfig

ENV_WORKER_CONFIG = "GRADSERVE_WORKER_CONFIG"


def shard_batches(batch_count: int, index: int, count: int) -> list[int]:
    """The batch positions worker `index` of `count` takes, padded by wrapping around."""
    rounds = math.ceil(batch_count / count)
    return [(step * count + index) % batch_count for step in range(rounds)]


def train_shard(client: GradientClient, train_set: Dataset, config: TrainConfig) -> dict[str, Any]:
    """ComputeGradients on this shard's batches, ApplyUpdate every accumulation_steps."""
    shuffler = torch.Generator().manual_seed(config.seed)
    steps = sent = 0
    version = 0
    losses: list[float] = []
    started = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.randperm(len(train_set), generator=shuffler) if config.shuffle else None
        everything = list(batches(train_set, config.batch_size, order))
        mine = shard_batches(len(everything), config.shard_index, config.shard_count)
        pending = 0
        computed_at = 0
        for turn, position in enumerate(mine):
            inputs, targets = everything[position]
            result = client.compute_gradients(inputs, targets)
            losses.append(result.loss)
            computed_at = result.model_version
            sent += 1
            pending += 1
            if pending == config.accumulation_steps or turn == len(mine) - 1:
                # expected_version: in sync mode, the round these batches went into.
                version = client.apply_update(
                    config.learning_rate,
                    reduction=config.reduction,
                    expected_version=computed_at,
                ).model_version
                steps += 1
                pending = 0
    return {
        "shard_index": config.shard_index,
        "shard_count": config.shard_count,
        "batches": sent,
        "steps": steps,
        "model_version": version,
        "last_loss": losses[-1] if losses else math.nan,
        "seconds": time.perf_counter() - started,
    }


def run_sharded(config: TrainConfig, out: TextIO, err: TextIO) -> int:
    """--workers N (processes) or one --shard-index of --shard-count."""
    from gradserve.client.train import connect, load_data, split  # noqa: PLC0415 (cycle)

    human = err if config.json else out
    embedded = None
    if config.server is None:
        embedded = create_server(
            ServerConfig(
                host="127.0.0.1",
                port=0,
                metrics_port=0,
                model=config.model,
                loss=config.loss,
                optimizer=config.optimizer,
                seed=config.seed,
                shutdown_grace_seconds=1.0,
                workers=max(8, 2 * config.workers + 2),
                mode="sync",
                sync_contributions=config.workers * config.accumulation_steps,
                sync_timeout_seconds=config.timeout_seconds,
            )
        )
        config = dataclasses.replace(config, server=embedded.address)
    try:
        with connect(config) as (client, where):
            client.wait_until_ready(config.connect_timeout_seconds)
            info = client.model_info()
            dataset, initial = load_data(config, info)
            if config.workers == 1:
                if initial and config.shard_index == 0:
                    client.set_parameters(initial)
                train_set, _ = split(dataset, config.validation_split, config.seed)
                report = train_shard(client, train_set, config)
                print(json.dumps(report) if config.json else _line(report), file=out)
                return 0
            if initial:
                client.set_parameters(initial)
            reports = _spawn(config)
            version, parameters = client.get_parameters()
    finally:
        if embedded is not None:
            embedded.stop(0)
    for report in reports:
        print(_line(report), file=human)
    if info.model == "linear":
        print(
            f"Trained w: {parameters['w'].item():.3f}, b: {parameters['b'].item():.3f}", file=human
        )
    if config.json:
        summary = {
            "server": where,
            "model": info.model_spec,
            "workers": config.workers,
            "model_version": version,
            "shards": reports,
            "parameters": {
                name: value.flatten().tolist()
                for name, value in parameters.items()
                if value.numel() <= 1024
            },
        }
        print(json.dumps(summary), file=out)
    return 0


def _line(report: dict[str, Any]) -> str:
    return (
        f"shard {report['shard_index']}/{report['shard_count']}: {report['batches']} batches, "
        f"{report['steps']} updates, last loss {report['last_loss']:.4f}, "
        f"model version {report['model_version']}"
    )


def _spawn(config: TrainConfig) -> list[dict[str, Any]]:
    children = []
    for index in range(config.workers):
        shard = dataclasses.replace(
            config,
            workers=1,
            shard_index=index,
            shard_count=config.workers,
            init="server",
            json=True,
            metrics_port=0,
            progress="never",
        )
        environment = {**os.environ, ENV_WORKER_CONFIG: _to_json(shard)}
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "gradserve.client.workers"],
                env=environment,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    reports = []
    failed = []
    for index, child in enumerate(children):
        stdout, _ = child.communicate()
        if child.returncode != 0:
            failed.append(f"worker {index} exited with {child.returncode}")
            continue
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    if failed:
        raise GradserveError("; ".join(failed))
    return reports


def _to_json(config: TrainConfig) -> str:
    values = dataclasses.asdict(config)
    return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in values.items()})


def _from_json(text: str) -> TrainConfig:
    values = json.loads(text)
    for field in dataclasses.fields(TrainConfig):
        value = values.get(field.name)
        if value is None:
            continue
        if "Path" in str(field.type):
            values[field.name] = Path(value)
        elif "tuple" in str(field.type):
            values[field.name] = tuple(value)
    return TrainConfig(**values)


def main() -> int:
    """A child of --workers: one shard, its report as one JSON line on stdout."""
    from gradserve.client.train import connect, load_data, split  # noqa: PLC0415 (cycle)

    config = _from_json(os.environ[ENV_WORKER_CONFIG])
    with connect(config) as (client, _):
        client.wait_until_ready(config.connect_timeout_seconds)
        dataset, _ = load_data(config, client.model_info())
        train_set, _ = split(dataset, config.validation_split, config.seed)
        print(json.dumps(train_shard(client, train_set, config)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
