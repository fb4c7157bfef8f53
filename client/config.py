"""Trainer configuration: one frozen dataclass from flags whose defaults come from GRADSERVE_*."""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_SERVER = "GRADSERVE_SERVER"
ENV_METRICS_PORT = "GRADSERVE_TRAIN_METRICS_PORT"
ENV_METRICS_HOST = "GRADSERVE_TRAIN_METRICS_HOST"
ENV_PUSHGATEWAY = "GRADSERVE_PUSHGATEWAY"
ENV_TIMEOUT = "GRADSERVE_TIMEOUT_SECONDS"


@dataclass(frozen=True)
class TrainConfig:
    # HOST:PORT of a running server; None starts an embedded one on a free loopback port.
    server: str | None = None
    # Model spec for the embedded server (a remote server has its own).
    model: str = "linear"
    epochs: int = 100
    batch_size: int = 10
    learning_rate: float = 0.01
    seed: int = 0
    samples: int = 100
    shuffle: bool = False
    # ComputeGradients calls per ApplyUpdate, and how the update reduces them.
    accumulation_steps: int = 1
    reduction: str = "sum"
    csv: Path | None = None
    features: tuple[str, ...] = ()
    target: str | None = None
    validation_split: float = 0.0
    # "seed": set the seed tutorial's initial w, b (linear model); "server": keep the server's.
    init: str = "auto"
    json: bool = False
    progress: str = "auto"
    metrics_port: int = 8000
    metrics_host: str = "127.0.0.1"
    linger_seconds: float = 0.0
    pushgateway: str | None = None
    run_id: str = ""
    timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 15.0
    log_every: int = 10
    # Print the autograd graph of the first batch before training (DescribeGraph).
    show_graph: bool = False
    # Write that graph as Graphviz DOT to this file.
    graph_dot: Path | None = None


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _learning_rate(text: str) -> float:
    value = float(text)
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number >= 0")
    return value


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> TrainConfig:
    env = os.environ if environ is None else environ
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python client/train.py",
        description="Train a model on a gradserve server: ComputeGradients for each batch, "
        "ApplyUpdate after every --accumulation-steps batches. With no --server, an embedded "
        "server is started on a free loopback port.",
    )
    add = parser.add_argument
    add(
        "--server",
        default=env.get(ENV_SERVER) or None,
        help=f"HOST:PORT of a gradserve server [{ENV_SERVER}]; default: embedded",
    )
    add("--model", default=d.model, help="model spec of the embedded server (linear, mlp:...)")
    add("--epochs", type=_positive, default=d.epochs)
    add("--batch-size", type=_positive, default=d.batch_size)
    add(
        "--lr",
        "--learning-rate",
        dest="learning_rate",
        type=_learning_rate,
        default=d.learning_rate,
    )
    add("--seed", type=int, default=d.seed, help="seeds data, initial parameters and shuffling")
    add("--samples", type=_positive, default=d.samples, help="synthetic samples (no --csv)")
    add("--shuffle", action="store_true", help="reshuffle the batches every epoch (seeded)")
    add(
        "--accumulation-steps",
        type=_positive,
        default=d.accumulation_steps,
        help="ComputeGradients calls per ApplyUpdate",
    )
    add(
        "--reduction",
        choices=("sum", "mean"),
        default=d.reduction,
        help="sum: PyTorch's accumulated .grad; mean: divided by the accumulated batches",
    )
    add("--csv", type=Path, default=None, help="train on numeric columns of a CSV file")
    add("--features", default="", help="comma-separated feature columns (default: all but target)")
    add("--target", default=None, help="target column (default: the last)")
    add(
        "--validation-split",
        type=_fraction,
        default=d.validation_split,
        help="fraction held out and evaluated after every epoch",
    )
    add(
        "--init",
        choices=("auto", "seed", "server"),
        default=d.init,
        help="auto: the seed tutorial's w, b for the linear model on synthetic data, else the "
        "server's parameters",
    )
    add(
        "--json",
        action="store_true",
        help="print a JSON summary on stdout (human lines go to stderr)",
    )
    add(
        "--progress",
        choices=("auto", "always", "never"),
        default=d.progress,
        help="progress bar on stderr (auto: only on a terminal)",
    )
    add(
        "--metrics-port",
        type=int,
        default=int(env.get(ENV_METRICS_PORT, d.metrics_port)),
        help=f"serve Prometheus /metrics here, 0 for none [{ENV_METRICS_PORT}]",
    )
    add(
        "--metrics-host",
        default=env.get(ENV_METRICS_HOST, d.metrics_host),
        help=f"address /metrics binds [{ENV_METRICS_HOST}]",
    )
    add(
        "--linger",
        dest="linger_seconds",
        type=float,
        default=d.linger_seconds,
        help="keep /metrics served this many seconds after training",
    )
    add(
        "--pushgateway",
        default=env.get(ENV_PUSHGATEWAY) or None,
        help=f"push the final metrics to this Pushgateway URL [{ENV_PUSHGATEWAY}]",
    )
    add("--run-id", default="", help="label for this run's metrics (default: random)")
    add(
        "--timeout",
        dest="timeout_seconds",
        type=float,
        default=float(env.get(ENV_TIMEOUT, d.timeout_seconds)),
        help="deadline of each call",
    )
    add(
        "--connect-timeout",
        dest="connect_timeout_seconds",
        type=float,
        default=d.connect_timeout_seconds,
        help="how long to wait for the server to be ready",
    )
    add(
        "--show-graph",
        action="store_true",
        help="print the autograd graph the server records for the first batch, then train",
    )
    add(
        "--graph-dot",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the first batch's autograd graph as Graphviz DOT to FILE",
    )
    args = parser.parse_args(argv)
    values = vars(args)
    values["features"] = tuple(f for f in args.features.split(",") if f)
    values["run_id"] = args.run_id or uuid.uuid4().hex[:8]
    return TrainConfig(**values)
