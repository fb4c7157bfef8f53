"""The server's command line: flags whose defaults come from the environment (GRADSERVE_*).

Flag and variable names are flat (`--checkpoint-dir`, GRADSERVE_CHECKPOINT_DIR); parse_args
routes each onto its section of ServerConfig (server/config.py). Nothing runs at import time.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .config import ServerConfig, flat_defaults
from .coordination.cross_run_batches import add_batching_flags
from .datasets.registry import add_dataset_flags
from .listening import add_listening_flags
from .metrics_endpoint import add_metrics_flags
from .models.sampling_limits import add_sampling_flags
from .replicas.flags import add_replica_flags
from .store.output_handles import add_output_handle_flags
from .tinker_api.flags import add_tinker_flags

ENV_MODEL = "GRADSERVE_MODEL"
ENV_LOSS = "GRADSERVE_LOSS"
ENV_MODEL_FILE = "GRADSERVE_MODEL_FILE"
ENV_MODEL_FACTORIES = "GRADSERVE_MODEL_FACTORIES"
ENV_DEVICE = "GRADSERVE_DEVICE"
ENV_OPTIMIZER = "GRADSERVE_OPTIMIZER"
ENV_SEED = "GRADSERVE_SEED"
ENV_MAX_MESSAGE_BYTES = "GRADSERVE_MAX_MESSAGE_BYTES"
ENV_MAX_BATCH_ELEMENTS = "GRADSERVE_MAX_BATCH_ELEMENTS"
ENV_MAX_CONCURRENT_RPCS = "GRADSERVE_MAX_CONCURRENT_RPCS"
ENV_WORKERS = "GRADSERVE_WORKERS"
ENV_MAX_STREAMS = "GRADSERVE_MAX_STREAMS"
ENV_MAX_RUNS = "GRADSERVE_MAX_RUNS"
ENV_MAX_RUN_PARAMETER_BYTES = "GRADSERVE_MAX_RUN_PARAMETER_BYTES"
ENV_RUN_IDLE_SECONDS = "GRADSERVE_RUN_IDLE_SECONDS"
ENV_DEFAULT_RUN_ACCESS = "GRADSERVE_DEFAULT_RUN_ACCESS"
ENV_MODEL_DIR = "GRADSERVE_MODEL_DIR"
ENV_STREAM_IDLE_SECONDS = "GRADSERVE_STREAM_IDLE_SECONDS"
ENV_TORCH_THREADS = "GRADSERVE_TORCH_THREADS"
ENV_REQUEST_ID_WINDOW = "GRADSERVE_REQUEST_ID_WINDOW"
ENV_REQUEST_ID_WINDOW_BYTES = "GRADSERVE_REQUEST_ID_WINDOW_BYTES"
ENV_SHUTDOWN_GRACE = "GRADSERVE_SHUTDOWN_GRACE_SECONDS"
ENV_DRAIN = "GRADSERVE_DRAIN_SECONDS"
ENV_LOG_LEVEL = "GRADSERVE_LOG_LEVEL"
ENV_CHECKPOINT_DIR = "GRADSERVE_CHECKPOINT_DIR"
ENV_CHECKPOINT_EVERY_UPDATES = "GRADSERVE_CHECKPOINT_EVERY_UPDATES"
ENV_CHECKPOINT_EVERY_SECONDS = "GRADSERVE_CHECKPOINT_EVERY_SECONDS"
ENV_CHECKPOINT_KEEP = "GRADSERVE_CHECKPOINT_KEEP"
ENV_DURABILITY = "GRADSERVE_DURABILITY"
ENV_TLS_CERT = "GRADSERVE_TLS_CERT"
ENV_TLS_KEY = "GRADSERVE_TLS_KEY"
ENV_TLS_CLIENT_CA = "GRADSERVE_TLS_CLIENT_CA"
ENV_AUTH_TOKENS_FILE = "GRADSERVE_AUTH_TOKENS_FILE"
# Tokens themselves, comma- or newline-separated (for secrets injected as environment).
ENV_AUTH_TOKENS = "GRADSERVE_AUTH_TOKENS"
ENV_AUTH_ALLOW_UNAUTHENTICATED_HEALTH = "GRADSERVE_AUTH_ALLOW_UNAUTHENTICATED_HEALTH"
ENV_MODE = "GRADSERVE_MODE"
ENV_SYNC_CONTRIBUTIONS = "GRADSERVE_SYNC_CONTRIBUTIONS"
ENV_SYNC_UNIT = "GRADSERVE_SYNC_UNIT"
ENV_SYNC_TIMEOUT = "GRADSERVE_SYNC_TIMEOUT_SECONDS"
ENV_SYNC_TIMEOUT_POLICY = "GRADSERVE_SYNC_TIMEOUT_POLICY"
ENV_MAX_STALENESS = "GRADSERVE_MAX_STALENESS"
ENV_STALE_POLICY = "GRADSERVE_STALE_POLICY"


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none") else int(text)


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("", "none") else float(text)


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    env = os.environ if environ is None else environ
    default = flat_defaults()

    def env_or(name: str, value: object) -> str:
        return env.get(name, "" if value is None else str(value))

    parser = argparse.ArgumentParser(
        prog="gradserve-server",
        description="Serve a PyTorch model's gradients over gRPC (gradserve.v1.GradientService).",
    )
    add = parser.add_argument
    add_listening_flags(add, env_or, default)
    add(
        "--model",
        default=env_or(ENV_MODEL, default["model"]),
        help="model spec: linear | mlp:IN-H-...-OUT[:relu|tanh|sigmoid|gelu][:dropout=P][:batchnorm]"
        f" | cnn:CxHxW-OUT[:channels=8-16][:...] | a --model-factory NAME [{ENV_MODEL}]",
    )
    add(
        "--model-file",
        default=env_or(ENV_MODEL_FILE, default["model_file"]) or None,
        help=f"JSON model description, instead of --model [{ENV_MODEL_FILE}]",
    )
    add(
        "--model-factory",
        dest="model_factories",
        action="append",
        default=[f for f in env_or(ENV_MODEL_FACTORIES, "").split(",") if f],
        help="NAME=package.module:function: register a trusted nn.Module factory as model NAME "
        f"(repeatable; comma-separated in {ENV_MODEL_FACTORIES})",
    )
    add(
        "--base-model",
        dest="base_models",
        action="append",
        default=[],
        help="NAME=DIR (a local Hugging Face model folder: config.json + *.safetensors) or "
        "NAME=SPEC: a frozen base that runs train LoRA adapters over, loaded once (repeatable; "
        "docs/adapters.md)",
    )
    add(
        "--device",
        default=env_or(ENV_DEVICE, default["device"]),
        help=f"cpu | cuda | cuda:N: where the model lives [{ENV_DEVICE}]",
    )
    add(
        "--loss",
        default=env_or(ENV_LOSS, default["loss"]),
        help=f"mse | l1 | huber | cross_entropy | bce_with_logits (default: the model's) [{ENV_LOSS}]",
    )
    add(
        "--optimizer",
        default=env_or(ENV_OPTIMIZER, default["optimizer"]),
        help=f"sgd | sgd:momentum=0.9,... | adam:... | adamw:... [{ENV_OPTIMIZER}]",
    )
    add(
        "--seed",
        type=_optional_int,
        default=_optional_int(env_or(ENV_SEED, default["seed"])),
        help=f"torch seed for the initial parameters, 'none' for random [{ENV_SEED}]",
    )
    add(
        "--max-message-bytes",
        type=int,
        default=int(env_or(ENV_MAX_MESSAGE_BYTES, default["max_message_bytes"])),
        help=f"largest gRPC message received or sent [{ENV_MAX_MESSAGE_BYTES}]",
    )
    add(
        "--max-batch-elements",
        type=int,
        default=int(env_or(ENV_MAX_BATCH_ELEMENTS, default["max_batch_elements"])),
        help=f"most elements in one batch tensor [{ENV_MAX_BATCH_ELEMENTS}]",
    )
    add(
        "--max-concurrent-rpcs",
        type=_optional_int,
        default=_optional_int(env_or(ENV_MAX_CONCURRENT_RPCS, default["max_concurrent_rpcs"])),
        help=f"calls in progress at once, 'none' for no limit [{ENV_MAX_CONCURRENT_RPCS}]",
    )
    add(
        "--workers",
        type=int,
        default=int(env_or(ENV_WORKERS, default["workers"])),
        help=f"gRPC handler threads for unary calls and health [{ENV_WORKERS}]",
    )
    add(
        "--max-streams",
        type=int,
        default=int(env_or(ENV_MAX_STREAMS, default["max_streams"])),
        help="streams open at once, each with a thread of its own beside --workers; one more "
        f"is refused RESOURCE_EXHAUSTED [{ENV_MAX_STREAMS}]",
    )
    add(
        "--stream-idle-seconds",
        type=float,
        default=float(env_or(ENV_STREAM_IDLE_SECONDS, default["stream_idle_seconds"])),
        help="cancel a stream that waits this long on its client, 0 for never "
        f"[{ENV_STREAM_IDLE_SECONDS}]",
    )
    add(
        "--torch-threads",
        type=_optional_int,
        default=_optional_int(env_or(ENV_TORCH_THREADS, default["torch_threads"])),
        help=f"torch intra-op threads (default: torch's) [{ENV_TORCH_THREADS}]",
    )
    add(
        "--request-id-window",
        type=int,
        default=int(env_or(ENV_REQUEST_ID_WINDOW, default["request_id_window"])),
        help=f"recent request ids remembered for deduplication, per RPC [{ENV_REQUEST_ID_WINDOW}]",
    )
    add(
        "--request-id-window-bytes",
        type=int,
        default=int(env_or(ENV_REQUEST_ID_WINDOW_BYTES, default["request_id_window_bytes"])),
        help="bytes of remembered results (returned gradients, Train losses) per RPC "
        f"[{ENV_REQUEST_ID_WINDOW_BYTES}]",
    )
    add(
        "--shutdown-grace",
        type=float,
        dest="shutdown_grace_seconds",
        default=float(env_or(ENV_SHUTDOWN_GRACE, default["shutdown_grace_seconds"])),
        help=f"seconds in-flight calls get on SIGTERM [{ENV_SHUTDOWN_GRACE}]",
    )
    add(
        "--drain-seconds",
        type=float,
        default=float(env_or(ENV_DRAIN, default["drain_seconds"])),
        help="on SIGTERM, seconds health reports NOT_SERVING while calls are still served, "
        f"before the grace; a second signal ends it [{ENV_DRAIN}]",
    )
    add(
        "--log-level",
        default=env_or(ENV_LOG_LEVEL, default["log_level"]),
        help=f"DEBUG | INFO | WARNING | ERROR [{ENV_LOG_LEVEL}]",
    )
    add(
        "--otlp-endpoint",
        default=None,
        help="export traces over OTLP/gRPC to HOST:PORT (needs the 'tracing' extra); "
        "default: OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing (docs/observability.md)",
    )
    add(
        "--checkpoint-dir",
        default=env_or(ENV_CHECKPOINT_DIR, default["checkpoint_dir"]) or None,
        help=f"restore from and save checkpoints to this directory [{ENV_CHECKPOINT_DIR}]",
    )
    add(
        "--checkpoint-every-updates",
        type=_optional_int,
        default=_optional_int(
            env_or(ENV_CHECKPOINT_EVERY_UPDATES, default["checkpoint_every_updates"])
        ),
        help=f"save a checkpoint every N updates [{ENV_CHECKPOINT_EVERY_UPDATES}]",
    )
    add(
        "--checkpoint-every-seconds",
        type=_optional_float,
        default=_optional_float(
            env_or(ENV_CHECKPOINT_EVERY_SECONDS, default["checkpoint_every_seconds"])
        ),
        help=f"save a checkpoint every T seconds when something changed [{ENV_CHECKPOINT_EVERY_SECONDS}]",
    )
    add(
        "--checkpoint-keep",
        type=int,
        default=int(env_or(ENV_CHECKPOINT_KEEP, default["checkpoint_keep"])),
        help=f"checkpoints kept, newest first [{ENV_CHECKPOINT_KEEP}]",
    )
    add(
        "--durability",
        choices=("async", "sync"),
        default=env_or(ENV_DURABILITY, default["durability"]),
        help="sync: answer ApplyUpdate, Train, SetParameters and UploadParameters only once "
        f"a checkpoint holding the change is fsync'd (needs --checkpoint-dir) [{ENV_DURABILITY}]",
    )
    add(
        "--tls-cert",
        default=env_or(ENV_TLS_CERT, default["tls_cert"]) or None,
        help=f"server certificate chain (PEM); turns TLS on [{ENV_TLS_CERT}]",
    )
    add(
        "--tls-key",
        default=env_or(ENV_TLS_KEY, default["tls_key"]) or None,
        help=f"its key [{ENV_TLS_KEY}]",
    )
    add(
        "--tls-client-ca",
        default=env_or(ENV_TLS_CLIENT_CA, default["tls_client_ca"]) or None,
        help=f"require client certificates signed by this CA (mTLS) [{ENV_TLS_CLIENT_CA}]",
    )
    add(
        "--auth-tokens-file",
        default=env_or(ENV_AUTH_TOKENS_FILE, default["auth_tokens_file"]) or None,
        help=f"require 'authorization: Bearer <token>', tokens one per line [{ENV_AUTH_TOKENS_FILE}]; "
        f"tokens can also come from {ENV_AUTH_TOKENS}",
    )
    add(
        "--auth-allow-unauthenticated-health",
        type=_bool,
        default=_bool(
            env_or(
                ENV_AUTH_ALLOW_UNAUTHENTICATED_HEALTH, default["auth_allow_unauthenticated_health"]
            )
        ),
        help="true: health checks and reflection need no token (default) "
        f"[{ENV_AUTH_ALLOW_UNAUTHENTICATED_HEALTH}]",
    )
    # Secrets from the environment only, never from argv (visible in ps).
    parser.set_defaults(
        auth_tokens=tuple(
            t.strip()
            for t in env.get(ENV_AUTH_TOKENS, "").replace(",", "\n").splitlines()
            if t.strip()
        )
    )
    add(
        "--mode",
        choices=("direct", "sync", "async"),
        default=env_or(ENV_MODE, default["mode"]),
        help=f"many workers: direct (each call acts at once), sync (ApplyUpdate waits for "
        f"--sync-contributions), async (bounded staleness) [{ENV_MODE}]",
    )
    add(
        "--sync-contributions",
        type=int,
        default=int(env_or(ENV_SYNC_CONTRIBUTIONS, default["sync_contributions"])),
        help=f"sync: contributions per update, in --sync-unit [{ENV_SYNC_CONTRIBUTIONS}]",
    )
    add(
        "--sync-unit",
        choices=("batches", "samples"),
        default=env_or(ENV_SYNC_UNIT, default["sync_unit"]),
        help=f"sync: what --sync-contributions counts [{ENV_SYNC_UNIT}]",
    )
    add(
        "--sync-timeout",
        dest="sync_timeout_seconds",
        type=float,
        default=float(env_or(ENV_SYNC_TIMEOUT, default["sync_timeout_seconds"])),
        help=f"sync: seconds a round waits from its first ApplyUpdate [{ENV_SYNC_TIMEOUT}]",
    )
    add(
        "--sync-timeout-policy",
        choices=("apply", "abort"),
        default=env_or(ENV_SYNC_TIMEOUT_POLICY, default["sync_timeout_policy"]),
        help=f"sync: on timeout apply what arrived, or abort the round (ABORTED, gradients "
        f"discarded) [{ENV_SYNC_TIMEOUT_POLICY}]",
    )
    add(
        "--max-staleness",
        type=int,
        default=int(env_or(ENV_MAX_STALENESS, default["max_staleness"])),
        help=f"async: versions a contribution may lag at full weight [{ENV_MAX_STALENESS}]",
    )
    add(
        "--stale-policy",
        choices=("reject", "downweight"),
        default=env_or(ENV_STALE_POLICY, default["stale_policy"]),
        help=f"async: staler contributions are rejected (ABORTED) or weighted 1/(1+staleness) "
        f"[{ENV_STALE_POLICY}]",
    )
    # The groups whose flags live beside what they configure.
    groups: list[Callable[..., None]] = [add_run_flags, add_output_handle_flags]
    groups += [add_dataset_flags, add_metrics_flags, add_replica_flags, add_sampling_flags]
    for add_group in [*groups, add_tinker_flags, add_batching_flags]:
        add_group(add, env_or, default)
    args = parser.parse_args(argv)
    return ServerConfig.from_flat(
        **{
            **vars(args),
            "loss": args.loss or None,
            "model_factories": tuple(args.model_factories),
            "base_models": tuple(args.base_models),
        }
    )


def add_run_flags(
    add: Callable[..., object], env_or: Callable[[str, object], str], default: dict[str, Any]
) -> None:
    """Training runs that clients create (docs/runs.md)."""
    add(
        "--max-runs",
        type=int,
        default=int(env_or(ENV_MAX_RUNS, default["max_runs"])),
        help=f"training runs at once, the default run included [{ENV_MAX_RUNS}]",
    )
    add(
        "--max-run-parameter-bytes",
        type=int,
        default=int(env_or(ENV_MAX_RUN_PARAMETER_BYTES, default["max_run_parameter_bytes"])),
        help=f"bytes of parameters across loaded runs [{ENV_MAX_RUN_PARAMETER_BYTES}]",
    )
    add(
        "--run-idle-seconds",
        type=_optional_float,
        default=_optional_float(env_or(ENV_RUN_IDLE_SECONDS, default["run_idle_seconds"])),
        help="checkpoint and unload a run idle this long, load it back on its next call "
        f"(needs --checkpoint-dir) [{ENV_RUN_IDLE_SECONDS}]",
    )
    add(
        "--default-run-access",
        choices=("all", "admin"),
        default=env_or(ENV_DEFAULT_RUN_ACCESS, default["default_run_access"]),
        help=f"which principals may use the default run [{ENV_DEFAULT_RUN_ACCESS}]",
    )
    add(
        "--model-dir",
        default=env_or(ENV_MODEL_DIR, default["model_dir"]) or None,
        help=f"model files (NAME.json) CreateRun may name as file:NAME [{ENV_MODEL_DIR}]",
    )
