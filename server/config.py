"""Server configuration: frozen dataclasses, one per concern, nested in ServerConfig.

Each section is defined once and handed whole to what it configures (CoordinationConfig to
the ServedRun's update policy, CheckpointConfig to the Checkpointer, ...). The command line and environment
stay flat (server/flags.py); `ServerConfig.from_flat` routes flat names (`checkpoint_dir`,
`mode`, ...) onto their sections. Nothing here runs at import time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gradserve.defaults import DEFAULT_MAX_MESSAGE_BYTES, MIB
from gradserve.errors import InvalidArgumentError


@dataclass(frozen=True)
class NetworkConfig:
    # Loopback by default: serving other hosts is a choice (containers set 0.0.0.0).
    host: str = "127.0.0.1"
    # 0 picks a free port; the bound one is printed and returned by create_server.
    port: int = 50051
    # Prometheus /metrics port; 0 turns the endpoint off.
    metrics_port: int = 8001
    # Where /metrics listens: loopback unless the operator opens it (server/metrics_endpoint.py).
    metrics_host: str = "127.0.0.1"
    # A client connection with no call in flight is closed after this long; 0: never
    # (server/listening.py). The client reconnects on its next call.
    connection_idle_seconds: float = 300.0
    # Client connections open at once (grpc.max_allowed_incoming_connections); 0: no limit.
    max_connections: int = 1024

    def __post_init__(self) -> None:
        if self.connection_idle_seconds < 0:
            raise InvalidArgumentError("connection_idle_seconds: must be >= 0")
        if self.max_connections < 0:
            raise InvalidArgumentError("max_connections: must be >= 0")


@dataclass(frozen=True)
class LimitsConfig:
    # The largest message received or sent, on the server and on every channel.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # The most elements the inputs or targets of one batch may have.
    max_batch_elements: int = 16 * MIB
    # Calls in progress at once; past it RESOURCE_EXHAUSTED. None: unlimited.
    max_concurrent_rpcs: int | None = 256
    # Recent request ids remembered for deduplication, per RPC.
    request_id_window: int = 1024
    # Bytes of remembered results (returned gradients, Train losses) per RPC; past it the
    # oldest results are dropped and their replays refused (docs/protocol.md).
    request_id_window_bytes: int = 64 * MIB
    # ComputeOutputs handles per run: held at once, bytes kept for backward, lifetime
    # (server/store/output_handles.py).
    output_handles: int = 16
    output_handle_bytes: int = 256 * MIB
    output_handle_seconds: float = 60.0


@dataclass(frozen=True)
class RuntimeConfig:
    # gRPC handler threads.
    # Handler threads for short (unary) calls; streams get threads of their own on top.
    workers: int = 8
    # Streaming RPCs open at once (Train, the parameter streams); one more is refused
    # RESOURCE_EXHAUSTED. A stream waiting on its client this long is cancelled (0: never).
    max_streams: int = 64
    stream_idle_seconds: float = 300.0
    # torch's intra-op threads; None keeps torch's default (one per core it sees).
    torch_threads: int | None = None
    shutdown_grace_seconds: float = 5.0
    # On SIGTERM, seconds of NOT_SERVING health while still serving, so a load balancer drains
    # this server before it stops. 0 by default: tests, embedded servers and Ctrl-C stop at
    # once; docker-compose.yml sets a few seconds (docs/docker.md).
    drain_seconds: float = 0.0
    log_level: str = "INFO"
    # OTLP/gRPC collector for traces (server/tracing.py); None: OTEL_EXPORTER_OTLP_ENDPOINT,
    # and without either, no tracing.
    otlp_endpoint: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    # The --model spec (server/models/specs.py).
    spec: str = "linear"
    # None: the model's default (mse for linear, cross_entropy for classifiers).
    loss: str | None = None
    # A JSON model description; replaces `spec` (and `loss` unless set).
    model_file: str | None = None
    # NAME=package.module:function entries: trusted code the operator adds to the registry.
    model_factories: tuple[str, ...] = ()
    # NAME=DIR (a local Hugging Face folder) or NAME=SPEC entries: the bases adapter runs
    # train LoRA adapters over, each loaded once (docs/adapters.md).
    base_models: tuple[str, ...] = ()
    # Where the model lives: cpu, cuda or cuda:N.
    device: str = "cpu"
    optimizer: str = "sgd"
    # Seeds torch before the model's parameters are drawn; None leaves torch's RNG alone.
    seed: int | None = 0


MODES = ("direct", "sync", "async")
SYNC_UNITS = ("batches", "samples")
SYNC_TIMEOUT_POLICIES = ("apply", "abort")
STALE_POLICIES = ("reject", "downweight")


@dataclass(frozen=True)
class CoordinationConfig:
    """Many workers on one model (server/coordination/update_policy.py, docs/scaling.md)."""

    # "direct" (each call acts at once), "sync" (ApplyUpdate waits for N contributions) or
    # "async" (bounded staleness).
    mode: str = "direct"
    # sync: contributions per update, counted in `sync_unit`.
    sync_contributions: int = 1
    sync_unit: str = "batches"
    sync_timeout_seconds: float = 30.0
    sync_timeout_policy: str = "apply"
    # async: the largest staleness accepted at full weight.
    max_staleness: int = 4
    stale_policy: str = "reject"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("mode", self.mode, MODES),
            ("sync_unit", self.sync_unit, SYNC_UNITS),
            ("sync_timeout_policy", self.sync_timeout_policy, SYNC_TIMEOUT_POLICIES),
            ("stale_policy", self.stale_policy, STALE_POLICIES),
        ):
            if value not in allowed:
                raise InvalidArgumentError(f"{name}: {value!r}, expected one of {allowed}")
        if self.sync_contributions < 1:
            raise InvalidArgumentError("sync_contributions: must be >= 1")
        if not self.sync_timeout_seconds > 0:
            raise InvalidArgumentError("sync_timeout_seconds: must be > 0")
        if self.max_staleness < 0:
            raise InvalidArgumentError("max_staleness: must be >= 0")


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints (server/checkpoints/files.py): restored on start, saved every N updates and/or
    every T seconds (None: not), on shutdown and on SaveCheckpoint; the newest `keep` kept."""

    directory: str | None = None
    every_updates: int | None = None
    every_seconds: float | None = None
    keep: int = 3
    # "sync": changes are answered after a checkpoint holding them is fsync'd (durability.py);
    # "async": saved later by the rules above (docs/checkpoints.md: what a crash loses).
    durability: str = "async"


@dataclass(frozen=True)
class TinkerConfig:
    """The Tinker REST API beside gRPC (server/tinker_api/, docs/tinker.md): off unless a port is set."""

    # None: no Tinker API; 0: a free port (the bound one is printed and on the handle).
    port: int | None = None
    # Loopback unless the operator opens it, as every listener here.
    host: str = "127.0.0.1"
    # Sessions held at once; one more is refused (429, which the SDK retries).
    max_sessions: int = 256
    # A session with no heartbeat this long is forgotten (its runs stay: they are runs).
    session_seconds: float = 600.0
    # Futures held at once (waiting, running, or answered and not yet retrieved), and the
    # bytes of the answers kept for retrieval.
    max_futures: int = 1024
    max_future_bytes: int = 256 * MIB
    # A request body (after zstd decompression) at most this large; past it 413.
    max_body_bytes: int = 64 * MIB

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port < 65536:
            raise InvalidArgumentError(f"tinker_port: {self.port} is not a port")
        for name in ("max_sessions", "max_futures", "max_future_bytes", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"tinker_{name}: must be >= 1")
        if not self.session_seconds > 0:
            raise InvalidArgumentError("tinker_session_seconds: must be > 0")


RUN_ACCESS = ("all", "admin")


@dataclass(frozen=True)
class RunsConfig:
    """Training runs that clients create (server/runs/registry.py, docs/runs.md)."""

    # Runs at once, the default run included.
    max_runs: int = 64
    # Bytes of parameters across all runs that are loaded (unloaded idle runs do not count).
    max_parameter_bytes: int = 4 * 1024 * MIB
    # Checkpoint and unload a run idle this long; loaded back on its next call. None: never.
    # Needs a checkpoint directory.
    idle_seconds: float | None = None
    # Who may use the default run: "all" principals, or "admin" principals only.
    default_run_access: str = "all"
    # Model files (NAME.json) that CreateRun may name as "file:NAME".
    model_dir: str | None = None

    def __post_init__(self) -> None:
        if self.max_runs < 1:
            raise InvalidArgumentError("max_runs: must be >= 1")
        if self.default_run_access not in RUN_ACCESS:
            raise InvalidArgumentError(
                f"default_run_access: {self.default_run_access!r}, expected one of {RUN_ACCESS}"
            )
        if self.idle_seconds is not None and not self.idle_seconds > 0:
            raise InvalidArgumentError("run_idle_seconds: must be > 0")


@dataclass(frozen=True)
class DatasetsConfig:
    """Datasets clients upload to a run (server/datasets/registry.py, docs/datasets.md)."""

    # Bytes of datasets across all runs, checked before an upload keeps a byte.
    max_bytes: int = 1024 * MIB
    # Datasets one run holds at once.
    max_per_run: int = 16

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise InvalidArgumentError("max_dataset_bytes: must be >= 0")
        if self.max_per_run < 0:
            raise InvalidArgumentError("max_datasets_per_run: must be >= 0")


@dataclass(frozen=True)
class SecurityConfig:
    # TLS: certificate chain and key (PEM files); with tls_client_ca, clients must present a
    # certificate signed by that CA (mTLS).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Bearer tokens (server/rpc/auth.py): a file with one token per line and/or tokens given
    # directly; none configured means no token is asked for. Never printed (repr=False).
    auth_tokens_file: str | None = None
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    # Health checks (and reflection) without a token, so orchestrators can probe.
    auth_allow_unauthenticated_health: bool = True
    # /metrics (server/metrics_endpoint.py): "none", "token" (any of the tokens above) or
    # "admin" (an admin principal's); over the TLS files above when metrics_tls; runs
    # labelled by "name" or by an opaque "id" (docs/observability.md).
    metrics_auth: str = "none"
    metrics_tls: bool = False
    metrics_run_labels: str = "name"

    def __post_init__(self) -> None:
        if self.metrics_auth not in ("none", "token", "admin"):
            raise InvalidArgumentError(f"metrics_auth: {self.metrics_auth!r}")
        if self.metrics_run_labels not in ("name", "id"):
            raise InvalidArgumentError(f"metrics_run_labels: {self.metrics_run_labels!r}")


@dataclass(frozen=True)
class ReplicasConfig:
    """`--replicas N`: N server processes behind nginx, runs placed by name (server/replicas/)."""

    # Server processes; 1 is one ordinary server and no proxy.
    count: int = 1
    # The nginx binary that fronts them (Debian's path; scripts/install-proxy-deps.sh).
    nginx: str = "/usr/sbin/nginx"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise InvalidArgumentError("replicas: must be >= 1")


@dataclass(frozen=True)
class SamplingLimits:
    """The Sample RPC's bounds (server/models/sampling_limits.py checks them, docs/sampling.md);
    memory counts the KV cache (and prompt logits) of all requests."""

    max_prompt_tokens: int = 4096
    max_tokens: int = 1024
    max_samples: int = 64
    max_concurrent: int = 4
    max_memory_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for field_name, value in vars(self).items():
            if value < 1:
                flat = _RENAMED[("sampling", field_name)]
                raise InvalidArgumentError(f"{flat}: {value} must be >= 1", field=flat)


@dataclass(frozen=True)
class BatchingConfig:
    """Cross-run batches of adapter runs on one base, off while the window is 0; when a batch
    closes: docs/batching.md."""

    batch_window_seconds: float = 0.0
    batch_max_requests: int = 16
    batch_max_tokens: int = 16_384
    # The queue of one base, refused past these (RESOURCE_EXHAUSTED with RetryInfo).
    batch_queue_requests: int = 256
    batch_queue_bytes: int = 64 * MIB

    def __post_init__(self) -> None:
        if not 0 <= self.batch_window_seconds <= 10:
            raise InvalidArgumentError("batch_window_seconds: must be in [0, 10]")
        for name in ("batch_max_requests", "batch_max_tokens", "batch_queue_requests"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name}: must be >= 1")
        if self.batch_queue_bytes < 0:
            raise InvalidArgumentError("batch_queue_bytes: must be >= 0")


_SECTIONS: dict[str, type[Any]] = {
    "network": NetworkConfig,
    "limits": LimitsConfig,
    "runtime": RuntimeConfig,
    "model": ModelConfig,
    "coordination": CoordinationConfig,
    "checkpoints": CheckpointConfig,
    "security": SecurityConfig,
    "runs": RunsConfig,
    "datasets": DatasetsConfig,
    "replicas": ReplicasConfig,
    "sampling": SamplingLimits,
    "tinker": TinkerConfig,
    "batching": BatchingConfig,
}
# Flat names (flags, environment) that are not the field's own name.
_RENAMED = {
    ("model", "spec"): "model",
    ("checkpoints", "directory"): "checkpoint_dir",
    ("runs", "max_parameter_bytes"): "max_run_parameter_bytes",
    ("runs", "idle_seconds"): "run_idle_seconds",
    ("checkpoints", "every_updates"): "checkpoint_every_updates",
    ("checkpoints", "every_seconds"): "checkpoint_every_seconds",
    ("checkpoints", "keep"): "checkpoint_keep",
    ("datasets", "max_bytes"): "max_dataset_bytes",
    ("datasets", "max_per_run"): "max_datasets_per_run",
    ("replicas", "count"): "replicas",
    ("sampling", "max_prompt_tokens"): "max_sample_prompt_tokens",
    ("sampling", "max_tokens"): "max_sample_tokens",
    ("sampling", "max_samples"): "max_samples_per_request",
    ("sampling", "max_concurrent"): "max_concurrent_samples",
    ("sampling", "max_memory_bytes"): "max_sampling_memory_bytes",
    # The Tinker API's settings: tinker_port, tinker_host, tinker_max_sessions, ...
    **{("tinker", f.name): f"tinker_{f.name}" for f in dataclasses.fields(TinkerConfig)},
}
# flat name -> (section, field)
FLAT_NAMES: dict[str, tuple[str, str]] = {
    _RENAMED.get((section, f.name), f.name): (section, f.name)
    for section, cls in _SECTIONS.items()
    for f in dataclasses.fields(cls)
}


@dataclass(frozen=True)
class ServerConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    runs: RunsConfig = field(default_factory=RunsConfig)
    datasets: DatasetsConfig = field(default_factory=DatasetsConfig)
    replicas: ReplicasConfig = field(default_factory=ReplicasConfig)
    # The Sample RPC's bounds (server/models/sampling_limits.py, docs/sampling.md).
    sampling: SamplingLimits = field(default_factory=SamplingLimits)
    tinker: TinkerConfig = field(default_factory=TinkerConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)

    def with_flat(self, **flat: Any) -> ServerConfig:
        """A copy with settings given by their flat (flag) names applied, e.g.
        `mode="sync"`, `checkpoint_dir=...`: what the flags, the environment and tests use."""
        changes: dict[str, dict[str, Any]] = {}
        for name, value in flat.items():
            if name not in FLAT_NAMES:
                raise TypeError(f"ServerConfig: unknown setting {name!r}")
            section, field_name = FLAT_NAMES[name]
            changes.setdefault(section, {})[field_name] = value
        sections = {
            section: dataclasses.replace(getattr(self, section), **fields)
            for section, fields in changes.items()
        }
        return dataclasses.replace(self, **sections)

    @classmethod
    def from_flat(cls, **flat: Any) -> ServerConfig:
        """A config from flat names, as the flags and environment give them."""
        return cls().with_flat(**flat)


def flat_defaults() -> dict[str, Any]:
    """Every flat name with its default value (the flags' defaults)."""
    default = ServerConfig()
    return {
        name: getattr(getattr(default, section), field_name)
        for name, (section, field_name) in FLAT_NAMES.items()
    }
