"""The trainer's flags by group (client/arguments.py builds the parser from these and nests
the values into a TrainConfig); every flag has a help line, so `--help` shows its default."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradserve.types import Reduction

from .connection_flags import positive_int
from .csv_stream import STREAM_ABOVE_BYTES
from .datasets import DATASET_DEFAULTS
from .lr_schedule import LR_SCHEDULE_HELP, parse_lr_schedule
from .server_data import add_data_on_server_flag

ENV_METRICS_PORT = "GRADSERVE_TRAIN_METRICS_PORT"
ENV_METRICS_HOST = "GRADSERVE_TRAIN_METRICS_HOST"
ENV_PUSHGATEWAY = "GRADSERVE_PUSHGATEWAY"
ENV_SHARD_INDEX = "GRADSERVE_SHARD_INDEX"
ENV_SHARD_COUNT = "GRADSERVE_SHARD_COUNT"
ENV_SHARED = "GRADSERVE_TRAIN_SHARED"
ENV_RUN = "GRADSERVE_RUN"


class RecordGiven(argparse.Action):
    """Store the value and note that the flag was typed (`given`): a flag that cannot apply
    is warned about only when the user asked for it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = (*getattr(namespace, "given", ()), option_string or self.dest)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("must be in [0, 1)")
    return value


def _learning_rate(text: str) -> float:
    value = float(text)
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number >= 0")
    return value


def _lr_schedule(text: str) -> str:
    try:
        parse_lr_schedule(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_model_flags(group: Any, d: Any, env: Mapping[str, str]) -> None:
    add = group.add_argument
    add(
        "--model",
        action=RecordGiven,
        default=d.model,
        help="model spec of the embedded server and of a --run to create",
    )
    add(
        "--optimizer",
        action=RecordGiven,
        default=d.optimizer,
        help="optimizer of the embedded server and of a --run to create",
    )
    add(
        "--loss",
        action=RecordGiven,
        default=d.loss,
        help="loss of the embedded server and of a --run to create (none: the model's)",
    )
    add(
        "--run",
        default=env.get(ENV_RUN, ""),
        metavar="NAME",
        help=f"train run NAME, created from --model/--optimizer/--loss/--seed when it does not "
        f"exist (docs/runs.md) [{ENV_RUN}]; empty: the server's default run",
    )
    add(
        "--from-checkpoint",
        default=None,
        metavar="RUN/NAME",
        help="create --run as a fork of this checkpoint (/NAME: the default run's)",
    )


def add_data_flags(group: Any, d: Any) -> None:
    add = group.add_argument
    add("--seed", type=int, default=d.seed, help="seeds data, initial parameters and shuffling")
    add("--samples", type=positive_int, default=d.samples, help="synthetic samples (no --csv)")
    add("--csv", type=Path, default=None, help="train on numeric columns of a CSV file")
    add("--features", default="", help="comma-separated feature columns (empty: all but target)")
    add("--target", default=None, help="target column (none: the last)")
    add(
        "--dataset",
        choices=tuple(DATASET_DEFAULTS),
        default=None,
        help="train on a bundled dataset (digits: scikit-learn's 8x8 handwritten digits); "
        "sets its own defaults for the flags not given",
    )
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
        "--init-from",
        type=Path,
        default=None,
        metavar="FILE",
        help="set these parameters (a safetensors file, as --save and `gradserve export` "
        "write) before the first step",
    )
    add(
        "--stream-csv",
        action="store_true",
        help=f"read --csv in batches instead of loading it (automatic above "
        f"{STREAM_ABOVE_BYTES // 2**20} MiB)",
    )
    add(
        "--shuffle-buffer",
        type=positive_int,
        default=d.shuffle_buffer,
        help="rows a streamed CSV is shuffled among with --shuffle",
    )


def add_schedule_flags(group: Any, d: Any) -> None:
    add = group.add_argument
    add("--epochs", type=positive_int, default=d.epochs, help="passes over the training set")
    add("--batch-size", type=positive_int, default=d.batch_size, help="samples per batch")
    add(
        "--lr",
        "--learning-rate",
        dest="learning_rate",
        type=_learning_rate,
        default=d.learning_rate,
        help="learning rate (the schedule's base value)",
    )
    add("--lr-schedule", type=_lr_schedule, default=d.lr_schedule, help=LR_SCHEDULE_HELP)
    add("--shuffle", action="store_true", help="reshuffle the batches every epoch (seeded)")
    add(
        "--accumulation-steps",
        type=positive_int,
        default=d.accumulation_steps,
        help="ComputeGradients calls per ApplyUpdate",
    )
    add(
        "--reduction",
        choices=tuple(reduction.value for reduction in Reduction),
        default=d.reduction.value,
        help="sum: PyTorch's accumulated .grad; mean: divided by the accumulated batches",
    )


def add_transport_flags(group: Any, d: Any, env: Mapping[str, str]) -> None:
    add = group.add_argument
    add(
        "--transport",
        choices=("stream", "unary"),
        default=d.transport,
        help="stream: steps packed into Train stream requests, pipelined; "
        "unary: ComputeGradients and ApplyUpdate calls",
    )
    add(
        "--steps-per-request",
        type=positive_int,
        default=d.steps_per_request,
        help="steps packed into one Train request (stream transport)",
    )
    add(
        "--window",
        type=positive_int,
        default=d.window,
        help="Train requests in flight at once (stream transport)",
    )
    add_data_on_server_flag(add, d.data_on_server, d.keep_datasets)
    add(
        "--shared",
        action="store_true",
        default=env.get(ENV_SHARED, "").lower() in ("1", "true", "yes"),
        help="other trainers drive the same model at once: no version checks, no exact "
        f"resume, keep the server's parameters [{ENV_SHARED}]",
    )
    add(
        "--workers",
        type=positive_int,
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
        type=positive_int,
        default=int(env.get(ENV_SHARD_COUNT, d.shard_count)),
        help=f"trainers sharing the data [{ENV_SHARD_COUNT}]",
    )


def add_metrics_flags(group: Any, d: Any, env: Mapping[str, str]) -> None:
    add = group.add_argument
    add(
        "--metrics-port",
        type=int,
        default=int(env[ENV_METRICS_PORT]) if ENV_METRICS_PORT in env else None,
        help=f"serve Prometheus /metrics here, 0 for none [{ENV_METRICS_PORT}]; none: "
        f"{d.metrics_port}, or a free port (with a notice) when {d.metrics_port} is taken",
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
        metavar="SECONDS",
        help="keep /metrics served this many seconds after training",
    )
    add(
        "--pushgateway",
        default=env.get(ENV_PUSHGATEWAY) or None,
        metavar="URL",
        help=f"push the final metrics to this Pushgateway [{ENV_PUSHGATEWAY}]",
    )
    add("--run-id", default="", help="label for this run's metrics (empty: random)")


def add_output_flags(group: Any, d: Any) -> None:
    add = group.add_argument
    add(
        "--json",
        action="store_true",
        help="print a JSON summary on stdout (people's lines: stderr)",
    )
    add(
        "--progress",
        choices=("auto", "always", "never"),
        default=d.progress,
        help="progress bar on stderr (auto: only on a terminal)",
    )
    add(
        "--save",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the final parameters to FILE as safetensors",
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
    add("--plot", type=Path, default=None, metavar="PNG", help="write the loss curve to PNG")
