"""The trainer's command line: `parse_args(argv)` turns flags (and GRADSERVE_* variables,
named here) into a TrainConfig; the flags' names and defaults are the CLI's contract."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gradserve.types import Reduction

from .config import (
    ConnectionConfig,
    DataConfig,
    EmbeddedServerConfig,
    MetricsConfig,
    OutputConfig,
    ParallelConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    TransportConfig,
)
from .csv_stream import STREAM_ABOVE_BYTES
from .datasets import DATASET_DEFAULTS
from .model_flags import add_model_flags
from .server_data import add_data_on_server_flag

ENV_SERVER = "GRADSERVE_SERVER"
ENV_METRICS_PORT = "GRADSERVE_TRAIN_METRICS_PORT"
ENV_METRICS_HOST = "GRADSERVE_TRAIN_METRICS_HOST"
ENV_PUSHGATEWAY = "GRADSERVE_PUSHGATEWAY"
ENV_TIMEOUT = "GRADSERVE_TIMEOUT_SECONDS"
ENV_SHARD_INDEX = "GRADSERVE_SHARD_INDEX"
ENV_SHARD_COUNT = "GRADSERVE_SHARD_COUNT"
ENV_SHARED = "GRADSERVE_TRAIN_SHARED"
ENV_RUN = "GRADSERVE_RUN"

# Each section of TrainConfig and the argparse destinations that fill it; a destination
# named differently from its field says so as (destination, field).
_SECTIONS: dict[str, tuple[type[Any], tuple[str | tuple[str, str], ...]]] = {
    "connection": (
        ConnectionConfig,
        (
            "server",
            "timeout_seconds",
            "connect_timeout_seconds",
            "retry_attempts",
            "retry_max_backoff_seconds",
            "tls_ca",
            "tls_cert",
            "tls_key",
            "token_file",
        ),
    ),
    "embedded": (EmbeddedServerConfig, ("model", "optimizer", "loss", "model_factories")),
    "run": (RunConfig, (("run", "name"), "from_checkpoint")),
    "data": (
        DataConfig,
        (
            "seed",
            "samples",
            "csv",
            "features",
            "target",
            "dataset",
            "validation_split",
            "init",
            "stream_csv",
            "shuffle_buffer",
            "step_seeds",
        ),
    ),
    "schedule": (
        ScheduleConfig,
        ("epochs", "batch_size", "learning_rate", "accumulation_steps", "reduction", "shuffle"),
    ),
    "transport": (
        TransportConfig,
        (("transport", "kind"), "steps_per_request", "window", "data_on_server"),
    ),
    "parallel": (ParallelConfig, ("shared", "workers", "shard_index", "shard_count")),
    "metrics": (
        MetricsConfig,
        (
            ("metrics_port", "port"),
            ("metrics_host", "host"),
            "linger_seconds",
            "pushgateway",
            "run_id",
        ),
    ),
    "output": (OutputConfig, ("json", "progress", "log_every", "show_graph", "graph_dot", "plot")),
}


class _FlatDefaults:
    """The defaults of every section by flag destination, for the parser's `default=`."""

    def __getattr__(self, destination: str) -> Any:
        for section, names in _SECTIONS.values():
            for name in names:
                flag, field = name if isinstance(name, tuple) else (name, name)
                if flag == destination:
                    return getattr(section(), field)
        raise AttributeError(destination)


def _nest(values: Mapping[str, Any]) -> TrainConfig:
    sections = {}
    for key, (section, names) in _SECTIONS.items():
        fields = {}
        for name in names:
            flag, field = name if isinstance(name, tuple) else (name, name)
            if flag in values:
                fields[field] = values[flag]
        sections[key] = section(**fields)
    return TrainConfig(**sections)


def program_name() -> str:
    """How the trainer was started: `gradserve-train` from the console script, else the path."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if invoked in ("", "train.py", "__main__.py", "-c"):
        return "python client/train.py"
    return invoked


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


def _server_address(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; expected HOST:PORT (omit --server to embed one)")
    return text.strip()


def _learning_rate(text: str) -> float:
    value = float(text)
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number >= 0")
    return value


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> TrainConfig:
    env = os.environ if environ is None else environ
    d = _FlatDefaults()
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description="Train a model on a gradserve server: ComputeGradients for each batch, "
        "ApplyUpdate after every --accumulation-steps batches. With no --server, an embedded "
        "server is started on a free loopback port.",
    )
    add = parser.add_argument
    add(
        "--server",
        type=_server_address,
        default=env.get(ENV_SERVER) or None,
        help=f"HOST:PORT of a gradserve server [{ENV_SERVER}]; default: embedded",
    )
    add("--model", default=d.model, help="model spec of the embedded server and a new --run")
    add(
        "--run",
        default=env.get(ENV_RUN, ""),
        metavar="NAME",
        help=f"train run NAME, created from --model/--optimizer/--loss/--seed when it does not "
        f"exist (docs/runs.md) [{ENV_RUN}]; default: the server's default run",
    )
    add(
        "--from-checkpoint",
        default=None,
        metavar="RUN/NAME",
        help="create --run as a fork of this checkpoint (/NAME: the default run's)",
    )
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
        choices=tuple(reduction.value for reduction in Reduction),
        default=d.reduction.value,
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
        "--shared",
        action="store_true",
        default=env.get(ENV_SHARED, "").lower() in ("1", "true", "yes"),
        help="other trainers drive the same model at once: no version checks, no exact "
        f"resume, keep the server's parameters [{ENV_SHARED}]",
    )
    add("--json", action="store_true", help="print a JSON summary on stdout (human lines: stderr)")
    add_model_flags(add)
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
    add(
        "--dataset",
        choices=tuple(DATASET_DEFAULTS),
        default=None,
        help="train on a bundled dataset (digits: scikit-learn's 8x8 handwritten digits); "
        "sets its own defaults for the flags not given",
    )
    add(
        "--optimizer",
        default=d.optimizer,
        help="optimizer of the embedded server and the --run to create",
    )
    add(
        "--loss",
        default=d.loss,
        help="loss of the embedded server and the --run to create (default: the model's)",
    )
    add(
        "--stream-csv",
        action="store_true",
        help="read --csv in batches instead of loading it (automatic above "
        f"{STREAM_ABOVE_BYTES // 2**20} MiB)",
    )
    add(
        "--shuffle-buffer",
        type=_positive,
        default=d.shuffle_buffer,
        help="rows a streamed CSV is shuffled among with --shuffle",
    )
    add("--plot", type=Path, default=None, metavar="PNG", help="write the loss curve to PNG")
    pre_parsed, _ = parser.parse_known_args(argv)
    if pre_parsed.dataset is not None:
        parser.set_defaults(**DATASET_DEFAULTS[pre_parsed.dataset])
    add(
        "--transport",
        choices=("stream", "unary"),
        default=d.transport,
        help="stream: steps packed into Train stream requests, pipelined (default); "
        "unary: ComputeGradients and ApplyUpdate calls",
    )
    add(
        "--steps-per-request",
        type=_positive,
        default=d.steps_per_request,
        help="steps packed into one Train request (stream transport)",
    )
    add(
        "--window",
        type=_positive,
        default=d.window,
        help="Train requests in flight at once (stream transport)",
    )
    add_data_on_server_flag(add, d.data_on_server)
    add(
        "--retry-attempts",
        type=_positive,
        default=d.retry_attempts,
        help="attempts per call while the server is UNAVAILABLE (restarting)",
    )
    add(
        "--retry-max-backoff",
        dest="retry_max_backoff_seconds",
        type=float,
        default=d.retry_max_backoff_seconds,
        help="longest wait between two attempts, seconds",
    )
    add("--tls-ca", type=Path, default=None, help="connect with TLS, trusting this CA (PEM)")
    add("--tls-cert", type=Path, default=None, help="client certificate for mTLS (PEM)")
    add("--tls-key", type=Path, default=None, help="its key (PEM)")
    add(
        "--token-file",
        type=Path,
        default=None,
        help="send the bearer token in this file (default: GRADSERVE_TOKEN, if set)",
    )
    add(
        "--workers",
        type=_positive,
        default=d.workers,
        help="trainer processes, each on its shard of the batches (docs/scaling.md)",
    )
    add(
        "--shard-index",
        type=int,
        default=int(env.get(ENV_SHARD_INDEX, d.shard_index)),
        help=f"this trainer's shard, 0-based [{ENV_SHARD_INDEX}]",
    )
    add(
        "--shard-count",
        type=_positive,
        default=int(env.get(ENV_SHARD_COUNT, d.shard_count)),
        help=f"trainers sharing the data [{ENV_SHARD_COUNT}]",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.shard_index < args.shard_count:
        parser.error(f"--shard-index {args.shard_index} is not in [0, {args.shard_count})")
    if args.from_checkpoint is not None and not args.run:
        parser.error("--from-checkpoint needs --run: the name of the fork to create")
    values = vars(args)
    values["features"] = tuple(f for f in args.features.split(",") if f)
    values["model_factories"] = tuple(values["model_factories"])
    values["run_id"] = args.run_id or uuid.uuid4().hex[:8]
    values["reduction"] = Reduction.parse(args.reduction)
    return _nest(values)
