"""The trainer's configuration: frozen dataclasses, one per concern, nested in TrainConfig.

`gradserve.client.arguments.parse_args(argv)` builds it from the flags (whose defaults come
from the GRADSERVE_* variables named there); `config_to_json` / `config_from_json` carry it to
a --workers child without pickle.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from gradserve.types import Reduction


@dataclass(frozen=True)
class ConnectionConfig:
    # HOST:PORT of a running server; None starts an embedded one on a free loopback port.
    server: str | None = None
    timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 15.0
    # Retries of UNAVAILABLE (same request_id): enough to outlast a server restart of seconds.
    retry_attempts: int = 20
    retry_max_backoff_seconds: float = 1.0
    # TLS: trust this CA (PEM); with tls_cert/tls_key, present a client certificate (mTLS).
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Bearer token: first line of this file; otherwise GRADSERVE_TOKEN. Never printed.
    token_file: Path | None = None


@dataclass(frozen=True)
class EmbeddedServerConfig:
    """What the embedded server is built with (a remote server has its own)."""

    model: str = "linear"
    optimizer: str = "sgd"
    loss: str | None = None
    # NAME=module:function entries the embedded server registers (--model-factory).
    model_factories: tuple[str, ...] = ()
    # The flags of these three the user typed (to warn when they cannot apply).
    given: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunConfig:
    """Which training run on the server (docs/runs.md)."""

    # "": the server's default run. Otherwise run NAME, created from the embedded section
    # (--model, --optimizer, --loss) and --seed when it does not exist (client/run_setup.py).
    name: str = ""
    # "RUN/NAME": create the run as a fork of that checkpoint (needs a name).
    from_checkpoint: str | None = None


@dataclass(frozen=True)
class DataConfig:
    # Seeds the data, the initial parameters, the shuffling and the validation split.
    seed: int = 0
    samples: int = 100
    csv: Path | None = None
    features: tuple[str, ...] = ()
    target: str | None = None
    # A bundled dataset (client/datasets.py) instead of the synthetic line or --csv.
    dataset: str | None = None
    validation_split: float = 0.0
    # "seed": set the seed tutorial's initial w, b (linear model); "server": keep the server's.
    init: str = "auto"
    # Set these parameters (safetensors, as --save writes) before the first step.
    init_from: Path | None = None
    # Read --csv in batches from disk instead of loading it (automatic for large files).
    stream_csv: bool = False
    # Rows the streaming reader shuffles among when shuffling.
    shuffle_buffer: int = 10_000
    # Every step carries a seed derived from `seed` (client/step_seeds.py).
    step_seeds: bool = True


@dataclass(frozen=True)
class ScheduleConfig:
    """What the steps are: batches, how many per update, how the update reduces them."""

    epochs: int = 100
    batch_size: int = 10
    learning_rate: float = 0.01
    # The learning rate per step (client/lr_schedule.py); "constant": learning_rate.
    lr_schedule: str = "constant"
    # ComputeGradients calls per ApplyUpdate, and how the update reduces them.
    accumulation_steps: int = 1
    reduction: Reduction = Reduction.SUM
    shuffle: bool = False


@dataclass(frozen=True)
class TransportConfig:
    # "stream": the Train stream, steps packed and pipelined (fastest); "unary": two calls
    # per step. Both give bitwise the same parameters.
    kind: str = "stream"
    steps_per_request: int = 100
    window: int = 4
    # "auto": upload the training set once and name batches by samples when it is held and
    # fits the server's dataset budget; "on": the same, or fail; "off": batches go inline.
    data_on_server: str = "auto"
    # Leave the training set uploaded when the trainer ends (by default it deletes what it
    # uploaded: datasets count against the server's budget for every run).
    keep_datasets: bool = False


@dataclass(frozen=True)
class ParallelConfig:
    """Who else trains this model."""

    # Other trainers drive the same model at the same time (compose --scale, async mode). Off:
    # this trainer owns the model, so each step carries expected_version and the run replays
    # exactly after a server restart. On: steps apply to whatever version the model is at,
    # and the parameters are the server's (auto init = server).
    shared: bool = False
    # Data-parallel workers (client/workers.py, docs/scaling.md): --workers N processes, or
    # this process as shard `shard_index` of `shard_count` (batches i with i % count == index).
    workers: int = 1
    shard_index: int = 0
    shard_count: int = 1

    @property
    def sharded(self) -> bool:
        return self.workers > 1 or self.shard_count > 1


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 8000
    # Serve on a free port instead (with a notice) when `port` is taken: only for the
    # default port; a port the user chose stays an error when it is busy.
    port_fallback: bool = False
    host: str = "127.0.0.1"
    # Keep /metrics served this long after training.
    linger_seconds: float = 0.0
    pushgateway: str | None = None
    run_id: str = ""


@dataclass(frozen=True)
class OutputConfig:
    json: bool = False
    progress: str = "auto"
    # Write the final parameters here as safetensors.
    save: Path | None = None
    log_every: int = 10
    # Print the autograd graph of the first batch before training (DescribeGraph).
    show_graph: bool = False
    # Write that graph as Graphviz DOT to this file.
    graph_dot: Path | None = None
    # Write the loss curve (and validation accuracy) as a PNG here.
    plot: Path | None = None
    # Off in a --workers child: its parent prints, its stdout is one JSON report.
    epoch_lines: bool = True


@dataclass(frozen=True)
class TrainConfig:
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    embedded: EmbeddedServerConfig = field(default_factory=EmbeddedServerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def config_to_json(config: TrainConfig) -> str:
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return json.dumps(plain(dataclasses.asdict(config)))


def config_from_json(text: str) -> TrainConfig:
    config: TrainConfig = _build(TrainConfig, json.loads(text))
    return config


def _build(kind: type[Any], values: dict[str, Any]) -> Any:
    """A (nested) config dataclass from the plain values config_to_json wrote."""
    hints = typing.get_type_hints(kind)
    arguments: dict[str, Any] = {}
    for item in dataclasses.fields(kind):
        if item.name not in values:
            continue
        value, hint = values[item.name], hints[item.name]
        if dataclasses.is_dataclass(hint):
            value = _build(typing.cast(type[Any], hint), value)
        elif value is not None:
            value = _convert(hint, value)
        arguments[item.name] = value
    return kind(**arguments)


def _convert(hint: Any, value: Any) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is Path:
            return Path(value)
        if isinstance(option, type) and issubclass(option, Enum):
            return option(value)
        if typing.get_origin(option) is tuple:
            return tuple(value)
    return value
