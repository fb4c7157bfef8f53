"""Server configuration: one frozen dataclass, built from flags whose defaults come from the
environment (GRADSERVE_*). Nothing here runs at import time."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ENV_HOST = "GRADSERVE_HOST"
ENV_PORT = "GRADSERVE_PORT"
ENV_MODEL = "GRADSERVE_MODEL"
ENV_LOSS = "GRADSERVE_LOSS"
ENV_MODEL_FILE = "GRADSERVE_MODEL_FILE"
ENV_MODEL_FACTORIES = "GRADSERVE_MODEL_FACTORIES"
ENV_DEVICE = "GRADSERVE_DEVICE"
ENV_OPTIMIZER = "GRADSERVE_OPTIMIZER"
ENV_SEED = "GRADSERVE_SEED"
ENV_METRICS_PORT = "GRADSERVE_METRICS_PORT"
ENV_MAX_MESSAGE_BYTES = "GRADSERVE_MAX_MESSAGE_BYTES"
ENV_MAX_BATCH_ELEMENTS = "GRADSERVE_MAX_BATCH_ELEMENTS"
ENV_MAX_CONCURRENT_RPCS = "GRADSERVE_MAX_CONCURRENT_RPCS"
ENV_WORKERS = "GRADSERVE_WORKERS"
ENV_TORCH_THREADS = "GRADSERVE_TORCH_THREADS"
ENV_REQUEST_ID_WINDOW = "GRADSERVE_REQUEST_ID_WINDOW"
ENV_SHUTDOWN_GRACE = "GRADSERVE_SHUTDOWN_GRACE_SECONDS"
ENV_LOG_LEVEL = "GRADSERVE_LOG_LEVEL"

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    # Loopback by default: serving other hosts is a choice (containers set 0.0.0.0).
    host: str = "127.0.0.1"
    # 0 picks a free port; the bound one is printed and returned by create_server.
    port: int = 50051
    model: str = "linear"
    # None: the model's default (mse for linear, cross_entropy for mlp).
    loss: str | None = None
    # A JSON model description (server/model_specs.py); replaces `model` (and `loss` unless set).
    model_file: str | None = None
    # NAME=package.module:function entries: trusted code the operator adds to the registry.
    model_factories: tuple[str, ...] = ()
    # Where the model lives: cpu, cuda or cuda:N.
    device: str = "cpu"
    optimizer: str = "sgd"
    # Seeds torch before the model's parameters are drawn; None leaves torch's RNG alone.
    seed: int | None = 0
    # Prometheus /metrics port; 0 turns the endpoint off.
    metrics_port: int = 8001
    # The largest message received or sent, on the server and on every channel.
    max_message_bytes: int = 64 * MIB
    # The most elements the inputs or targets of one batch may have.
    max_batch_elements: int = 16 * MIB
    # Calls in progress at once; past it RESOURCE_EXHAUSTED. None: unlimited.
    max_concurrent_rpcs: int | None = 256
    workers: int = 8
    # torch's intra-op threads; None keeps torch's default (one per core it sees).
    torch_threads: int | None = None
    request_id_window: int = 1024
    shutdown_grace_seconds: float = 5.0
    log_level: str = "INFO"


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none") else int(text)


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    env = os.environ if environ is None else environ
    default = ServerConfig()

    def env_or(name: str, value: object) -> str:
        return env.get(name, "" if value is None else str(value))

    parser = argparse.ArgumentParser(
        prog="gradserve-server",
        description="Serve a PyTorch model's gradients over gRPC (gradserve.v1.GradientService).",
    )
    add = parser.add_argument
    add("--host", default=env_or(ENV_HOST, default.host), help=f"address to bind [{ENV_HOST}]")
    add(
        "--port",
        type=int,
        default=int(env_or(ENV_PORT, default.port)),
        help=f"port to bind, 0 for a free one [{ENV_PORT}]",
    )
    add(
        "--model",
        default=env_or(ENV_MODEL, default.model),
        help="model spec: linear | mlp:IN-H-...-OUT[:relu|tanh|sigmoid|gelu][:dropout=P][:batchnorm]"
        f" | cnn:CxHxW-OUT[:channels=8-16][:...] | a --model-factory NAME [{ENV_MODEL}]",
    )
    add(
        "--model-file",
        default=env_or(ENV_MODEL_FILE, default.model_file) or None,
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
        "--device",
        default=env_or(ENV_DEVICE, default.device),
        help=f"cpu | cuda | cuda:N: where the model lives [{ENV_DEVICE}]",
    )
    add(
        "--loss",
        default=env_or(ENV_LOSS, default.loss),
        help=f"mse | l1 | huber | cross_entropy | bce_with_logits (default: the model's) [{ENV_LOSS}]",
    )
    add(
        "--optimizer",
        default=env_or(ENV_OPTIMIZER, default.optimizer),
        help=f"sgd | sgd:momentum=0.9,... | adam:... | adamw:... [{ENV_OPTIMIZER}]",
    )
    add(
        "--seed",
        type=_optional_int,
        default=_optional_int(env_or(ENV_SEED, default.seed)),
        help=f"torch seed for the initial parameters, 'none' for random [{ENV_SEED}]",
    )
    add(
        "--metrics-port",
        type=int,
        default=int(env_or(ENV_METRICS_PORT, default.metrics_port)),
        help=f"Prometheus /metrics port, 0 for none [{ENV_METRICS_PORT}]",
    )
    add(
        "--max-message-bytes",
        type=int,
        default=int(env_or(ENV_MAX_MESSAGE_BYTES, default.max_message_bytes)),
        help=f"largest gRPC message received or sent [{ENV_MAX_MESSAGE_BYTES}]",
    )
    add(
        "--max-batch-elements",
        type=int,
        default=int(env_or(ENV_MAX_BATCH_ELEMENTS, default.max_batch_elements)),
        help=f"most elements in one batch tensor [{ENV_MAX_BATCH_ELEMENTS}]",
    )
    add(
        "--max-concurrent-rpcs",
        type=_optional_int,
        default=_optional_int(env_or(ENV_MAX_CONCURRENT_RPCS, default.max_concurrent_rpcs)),
        help=f"calls in progress at once, 'none' for no limit [{ENV_MAX_CONCURRENT_RPCS}]",
    )
    add(
        "--workers",
        type=int,
        default=int(env_or(ENV_WORKERS, default.workers)),
        help=f"gRPC handler threads [{ENV_WORKERS}]",
    )
    add(
        "--torch-threads",
        type=_optional_int,
        default=_optional_int(env_or(ENV_TORCH_THREADS, default.torch_threads)),
        help=f"torch intra-op threads (default: torch's) [{ENV_TORCH_THREADS}]",
    )
    add(
        "--request-id-window",
        type=int,
        default=int(env_or(ENV_REQUEST_ID_WINDOW, default.request_id_window)),
        help=f"recent request ids remembered for deduplication [{ENV_REQUEST_ID_WINDOW}]",
    )
    add(
        "--shutdown-grace",
        type=float,
        dest="shutdown_grace_seconds",
        default=float(env_or(ENV_SHUTDOWN_GRACE, default.shutdown_grace_seconds)),
        help=f"seconds in-flight calls get on SIGTERM [{ENV_SHUTDOWN_GRACE}]",
    )
    add(
        "--log-level",
        default=env_or(ENV_LOG_LEVEL, default.log_level),
        help=f"DEBUG | INFO | WARNING | ERROR [{ENV_LOG_LEVEL}]",
    )
    args = parser.parse_args(argv)
    return ServerConfig(
        **{**vars(args), "loss": args.loss or None, "model_factories": tuple(args.model_factories)}
    )
