"""Builds a running gradserve server from a ServerConfig: runs, servicer, standard services.

`create_server` binds and starts, and returns a handle with the bound port; blocking and signal
handling are serve.py's business, so tests and the trainer's embedded server use this directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gradserve.defaults import SERVICE_NAME, channel_options

from .checkpoints.files import Checkpointer
from .config import ServerConfig
from .datasets.registry import DatasetRegistry
from .listening import check_port_free, format_address, server_options
from .metrics import ServerMetrics
from .rpc.auth import BearerTokenInterceptor, load_tokens, server_credentials
from .rpc.interceptors import ServerInterceptor
from .rpc.raw_handlers import add_gradient_service
from .rpc.reflection import enable_server_reflection
from .rpc.servicer import GradientServicer
from .rpc.stream_admission import StreamAdmission
from .runs.lifecycle import Run, RunBuilder, RunSpec
from .runs.names import DEFAULT_RUN
from .runs.principals import PrincipalTable
from .runs.registry import RunRegistry
from .store.parameter_store import ParameterStore
from .tracing import server_interceptors

logger = logging.getLogger(__name__)

# Kept importable from here for code that embeds a server (they live in gradserve.defaults).
__all__ = ["SERVICE_NAME", "GradientServer", "channel_options", "create_server", "format_address"]


@dataclass
class GradientServer:
    """A started server. `port` is the one bound (useful with port 0)."""

    config: ServerConfig
    server: grpc.Server
    port: int
    runs: RunRegistry
    metrics: ServerMetrics
    health: health.HealthServicer
    streams: StreamAdmission
    default_run: Run
    # Set by stop() when a run's final checkpoint could not be written (serve.py exits 1).
    final_checkpoint_failed: bool = False

    @property
    def address(self) -> str:
        return format_address(self.config.network.host, self.port)

    @property
    def store(self) -> ParameterStore:
        """The default run's store (the one model of a server that serves no other runs)."""
        assert self.default_run.served is not None  # the default run is never unloaded
        return self.default_run.served.store

    @property
    def checkpointer(self) -> Checkpointer | None:
        return self.default_run.checkpointer

    def not_serving(self) -> None:
        """Report NOT_SERVING for the server and GradientService (a failed distributed store)."""
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def drain(self) -> None:
        """Report NOT_SERVING from now on, still serving: load balancers stop sending calls."""
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight calls finish for `grace` seconds, then stop."""
        self.health.enter_graceful_shutdown()
        grace = self.config.runtime.shutdown_grace_seconds if grace is None else grace
        self.server.stop(grace).wait()
        self.streams.close()
        # After the calls in flight are done: each run's final checkpoint holds all of them.
        self.final_checkpoint_failed = not self.runs.close()

    def wait(self) -> None:
        """Block until the server has stopped."""
        self.server.wait_for_termination()


def create_server(
    config: ServerConfig,
    metrics: ServerMetrics | None = None,
    store_factory: Callable[..., ParameterStore] | None = None,
) -> GradientServer:
    """`store_factory`: the store class to serve with (server/store/distributed.py's on rank 0)."""
    runtime, limits, model_config = config.runtime, config.limits, config.model
    # Before the model is built: a busy port is one line, not minutes of loading first.
    check_port_free(config.network.host, config.network.port, "--port")
    if runtime.torch_threads is not None:
        torch.set_num_threads(runtime.torch_threads)
    metrics = metrics or ServerMetrics(run_labels=config.security.metrics_run_labels)
    builder = RunBuilder(config, metrics, store_factory or ParameterStore)
    # Built and its checkpoint restored before the port is bound: nobody sees the model
    # until the checkpoint is in it.
    default = builder.build(DEFAULT_RUN, "", RunSpec(model_config.spec, model_config.loss,
                                                     model_config.optimizer, model_config.seed))  # fmt: skip
    runs = RunRegistry(builder)
    runs.start(default)
    # After the error map, so a refused stream is an ordinary RESOURCE_EXHAUSTED status.
    admission = StreamAdmission(
        runtime.max_streams,
        runtime.stream_idle_seconds,
        on_refused=metrics.streams_refused.inc,
        on_idle=metrics.streams_idle_cancelled.inc,
    )
    metrics.open_streams.set_function(lambda: admission.active)
    interceptors: list[grpc.ServerInterceptor] = [ServerInterceptor(metrics), admission]
    tokens = load_tokens(config.security)
    if tokens:
        # First in the chain, so a denied call reaches nothing else.
        interceptors.insert(
            0,
            BearerTokenInterceptor(
                [entry.token for entry in tokens],
                allow_unauthenticated_health=config.security.auth_allow_unauthenticated_health,
                metrics=metrics,
            ),
        )
    interceptors[:0] = server_interceptors(runtime.otlp_endpoint)  # first: spans see every call
    credentials = server_credentials(config.security)

    server = grpc.server(
        # Threads for short calls plus one per admitted stream: streams cannot starve the
        # unary calls and health (docs/availability.md).
        futures.ThreadPoolExecutor(
            max_workers=runtime.workers + runtime.max_streams, thread_name_prefix="gradserve"
        ),
        interceptors=interceptors,
        options=[*channel_options(limits.max_message_bytes), *server_options(config.network)],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    datasets = DatasetRegistry(config.datasets)
    metrics.dataset_bytes.set_function(datasets.held_bytes)
    servicer = GradientServicer(runs, limits, PrincipalTable(tokens), datasets, config.sampling)
    add_gradient_service(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
    address = format_address(config.network.host, config.network.port)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0  # grpcio raises where older versions returned 0
    if port == 0:
        # Taken since the check above: gRPC has logged why; SO_REUSEPORT is off, so
        # the port stays the other server's alone.
        check_port_free(config.network.host, config.network.port, "--port")
        raise OSError(f"could not bind {address}")
    server.start()
    # The model is built and any checkpoint restored before anyone is told it is ready.
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("model %s, optimizer %s", default.model_spec, default.optimizer_description)
    admission.start()
    return GradientServer(config, server, port, runs, metrics, health_servicer, admission, default)
