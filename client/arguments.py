"""The trainer's command line: `parse_args(argv)` turns flags (and GRADSERVE_* variables,
named in client/connection_flags.py and client/train_flags.py) into a TrainConfig; the flags'
names and defaults are the CLI's contract."""

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
from .connection_flags import CONNECTION_FIELDS, HelpWithDefaults, add_connection_flags
from .datasets import DATASET_DEFAULTS
from .model_flags import add_factory_and_seed_flags
from .train_flags import (
    add_data_flags,
    add_metrics_flags,
    add_model_flags,
    add_output_flags,
    add_schedule_flags,
    add_transport_flags,
)

# Each section of TrainConfig and the argparse destinations that fill it; a destination
# named differently from its field says so as (destination, field).
_SECTIONS: dict[str, tuple[type[Any], tuple[str | tuple[str, str], ...]]] = {
    "connection": (ConnectionConfig, CONNECTION_FIELDS),
    "embedded": (
        EmbeddedServerConfig,
        ("model", "optimizer", "loss", "given", "model_factories"),
    ),
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
            "init_from",
            "stream_csv",
            "shuffle_buffer",
            "step_seeds",
        ),
    ),
    "schedule": (
        ScheduleConfig,
        (
            "epochs",
            "batch_size",
            "learning_rate",
            "lr_schedule",
            "accumulation_steps",
            "reduction",
            "shuffle",
        ),
    ),
    "transport": (
        TransportConfig,
        (
            ("transport", "kind"),
            "steps_per_request",
            "window",
            "data_on_server",
            "keep_datasets",
        ),
    ),
    "parallel": (ParallelConfig, ("shared", "workers", "shard_index", "shard_count")),
    "metrics": (
        MetricsConfig,
        (
            ("metrics_port", "port"),
            ("metrics_port_fallback", "port_fallback"),
            ("metrics_host", "host"),
            "linger_seconds",
            "pushgateway",
            "run_id",
        ),
    ),
    "output": (
        OutputConfig,
        ("json", "progress", "log_every", "save", "show_graph", "graph_dot", "plot"),
    ),
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
    if invoked == "gradserve":
        return "gradserve train"
    return invoked


def build_parser(env: Mapping[str, str], dataset: str | None = None) -> argparse.ArgumentParser:
    """Every flag of the trainer, each with its default in --help (a --dataset's own
    defaults included when `dataset` names one)."""
    d = _FlatDefaults()
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description="Train a model on a gradserve server: ComputeGradients for each batch, "
        "ApplyUpdate after every --accumulation-steps batches. With no --server, an embedded "
        "server is started on a free loopback port.",
        formatter_class=HelpWithDefaults,
    )
    add_connection_flags(
        parser.add_argument_group("connection"),
        env,
        server_help="none: an embedded server on a free loopback port",
    )
    model_group = parser.add_argument_group("model and run")
    add_model_flags(model_group, d, env)
    add_factory_and_seed_flags(model_group.add_argument)
    add_data_flags(parser.add_argument_group("data"), d)
    add_schedule_flags(parser.add_argument_group("schedule"), d)
    add_transport_flags(parser.add_argument_group("transport and parallelism"), d, env)
    add_metrics_flags(parser.add_argument_group("metrics"), d, env)
    add_output_flags(parser.add_argument_group("output"), d)
    parser.set_defaults(given=())
    if dataset is not None:
        parser.set_defaults(**DATASET_DEFAULTS[dataset])
    return parser


def _chosen_dataset(argv: Sequence[str] | None) -> str | None:
    """--dataset alone, read first: its defaults are the parser's defaults (and --help's)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--dataset", choices=tuple(DATASET_DEFAULTS), default=None)
    known, _ = first.parse_known_args(argv)
    return known.dataset  # type: ignore[no-any-return]


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> TrainConfig:
    env = os.environ if environ is None else environ
    parser = build_parser(env, _chosen_dataset(argv))
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
    # No --metrics-port (nor its variable): the default port, or a free one when it is taken.
    values["metrics_port_fallback"] = args.metrics_port is None
    if args.metrics_port is None:
        values["metrics_port"] = MetricsConfig().port
    return _nest(values)
