"""Builds a running gradserve server from a ServerConfig: store, servicer, standard services.

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
from gradserve.server.auth import BearerTokenInterceptor, load_tokens, server_credentials
from gradserve.server.checkpoints import Checkpointer
from gradserve.server.config import ServerConfig
from gradserve.server.coordination import build_coordinator
from gradserve.server.interceptors import ServerInterceptor
from gradserve.server.metrics import ServerMetrics
from gradserve.server.model_specs import build_configured
from gradserve.server.optimizers import build_optimizer
from gradserve.server.parameter_store import ParameterStore
from gradserve.server.reflection import enable_server_reflection
from gradserve.server.servicer import GradientServicer
from gradserve.server.tracing import server_interceptors
from gradserve.v1 import gradserve_pb2_grpc

logger = logging.getLogger(__name__)

# Kept importable from here for code that embeds a server (they live in gradserve.defaults).
__all__ = ["SERVICE_NAME", "GradientServer", "channel_options", "create_server"]


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class GradientServer:
    """A started server. `port` is the one bound (useful with port 0)."""

    config: ServerConfig
    server: grpc.Server
    port: int
    store: ParameterStore
    metrics: ServerMetrics
    health: health.HealthServicer
    checkpointer: Checkpointer | None = None

    @property
    def address(self) -> str:
        return format_address(self.config.network.host, self.port)

    def drain(self) -> None:
        """Report NOT_SERVING from now on, still serving: load balancers stop sending calls."""
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight calls finish for `grace` seconds, then stop."""
        self.health.enter_graceful_shutdown()
        grace = self.config.runtime.shutdown_grace_seconds if grace is None else grace
        self.server.stop(grace).wait()
        if self.checkpointer is not None:
            # After the calls in flight are done: the final checkpoint holds all of them.
            self.checkpointer.close()
            saved = self.checkpointer.save()
            logger.info("checkpoint %s at model version %d", saved.path.name, saved.model_version)

    def wait(self) -> None:
        self.server.wait_for_termination()


def create_server(
    config: ServerConfig,
    metrics: ServerMetrics | None = None,
    store_factory: Callable[..., ParameterStore] | None = None,
) -> GradientServer:
    """`store_factory`: the store class to serve with (server/distributed.py's on rank 0)."""
    runtime, limits, model_config = config.runtime, config.limits, config.model
    if runtime.torch_threads is not None:
        torch.set_num_threads(runtime.torch_threads)
    model = build_configured(model_config)
    optimizer = build_optimizer(model_config.optimizer, list(model.module.parameters()))
    store = (store_factory or ParameterStore)(
        model, optimizer, request_id_window=limits.request_id_window
    )
    metrics = metrics or ServerMetrics()
    metrics.watch(store)
    checkpointer = None
    if config.checkpoints.directory:
        checkpointer = Checkpointer(store, config.checkpoints)
        # Before the port is bound: nobody sees the model until the checkpoint is in it.
        checkpointer.restore_latest()
    interceptors: list[grpc.ServerInterceptor] = [ServerInterceptor(metrics)]
    tokens = load_tokens(config.security)
    if tokens:
        # First in the chain, so a denied call reaches nothing else.
        interceptors.insert(
            0,
            BearerTokenInterceptor(
                tokens,
                allow_unauthenticated_health=config.security.auth_allow_unauthenticated_health,
                metrics=metrics,
            ),
        )
    interceptors[:0] = server_interceptors(runtime.otlp_endpoint)  # first: spans see every call
    credentials = server_credentials(config.security)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=runtime.workers, thread_name_prefix="gradserve"),
        interceptors=interceptors,
        options=channel_options(limits.max_message_bytes),
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    coordinator = build_coordinator(store, config.coordination, metrics, limits)
    gradserve_pb2_grpc.add_GradientServiceServicer_to_server(
        GradientServicer(coordinator, checkpointer), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
    address = format_address(config.network.host, config.network.port)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    server.start()
    # The model is built and any checkpoint restored before anyone is told it is ready.
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("model %s, optimizer %s", model.spec, optimizer.description)
    if checkpointer is not None:
        checkpointer.start()
    return GradientServer(config, server, port, store, metrics, health_servicer, checkpointer)
