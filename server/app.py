"""Builds a running gradserve server from a ServerConfig: store, servicer, standard services.

`create_server` binds and starts, and returns a handle with the bound port; blocking and signal
handling are serve.py's business, so tests and the trainer's embedded server use this directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gradserve.server.auth import BearerTokenInterceptor, load_tokens, server_credentials
from gradserve.server.checkpoints import Checkpointer
from gradserve.server.config import ServerConfig
from gradserve.server.coordination import build_coordinator, coordination_config
from gradserve.server.interceptors import ServerInterceptor
from gradserve.server.metrics import ServerMetrics
from gradserve.server.model_specs import build_configured
from gradserve.server.optimizers import build_optimizer
from gradserve.server.parameter_store import ParameterStore
from gradserve.server.servicer import GradientServicer
from gradserve.server.tracing import server_interceptors
from gradserve.v1 import gradserve_pb2, gradserve_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = gradserve_pb2.DESCRIPTOR.services_by_name["GradientService"].full_name


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Message limits for both directions; used by the server and by every channel."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


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
        return format_address(self.config.host, self.port)

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight calls finish for `grace` seconds, then stop."""
        self.health.enter_graceful_shutdown()
        grace = self.config.shutdown_grace_seconds if grace is None else grace
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
    if config.torch_threads is not None:
        torch.set_num_threads(config.torch_threads)
    model = build_configured(
        config.model,
        config.loss,
        config.seed,
        model_file=config.model_file,
        factories=config.model_factories,
        device=config.device,
    )
    optimizer = build_optimizer(config.optimizer, list(model.module.parameters()))
    store = (store_factory or ParameterStore)(
        model, optimizer, request_id_window=config.request_id_window
    )
    metrics = metrics or ServerMetrics()
    checkpointer = None
    if config.checkpoint_dir:
        checkpointer = Checkpointer(
            store,
            Path(config.checkpoint_dir),
            every_updates=config.checkpoint_every_updates,
            every_seconds=config.checkpoint_every_seconds,
            keep=config.checkpoint_keep,
        )
        # Before the port is bound: nobody sees the model until the checkpoint is in it.
        checkpointer.restore_latest()
    metrics.model_version.set(store.version)
    interceptors: list[grpc.ServerInterceptor] = [ServerInterceptor(metrics)]
    tokens = load_tokens(config)
    if tokens:
        # First in the chain, so a denied call reaches nothing else.
        interceptors.insert(
            0,
            BearerTokenInterceptor(
                tokens,
                allow_unauthenticated_health=config.auth_allow_unauthenticated_health,
                metrics=metrics,
            ),
        )
    interceptors[:0] = server_interceptors(config.otlp_endpoint)  # first: spans see every call
    credentials = server_credentials(config)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="gradserve"),
        interceptors=interceptors,
        options=channel_options(config.max_message_bytes),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    gradserve_pb2_grpc.add_GradientServiceServicer_to_server(
        GradientServicer(
            store,
            metrics,
            max_batch_elements=config.max_batch_elements,
            max_message_bytes=config.max_message_bytes,
            checkpointer=checkpointer,
            coordinator=build_coordinator(
                store, coordination_config(config), metrics, config.request_id_window
            ),
        ),
        server,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = format_address(config.host, config.port)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {format_address(config.host, config.port)}")
    server.start()
    # The model is built and any checkpoint restored before anyone is told it is ready.
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logger.info("model %s, optimizer %s", model.spec, optimizer.description)
    if checkpointer is not None:
        checkpointer.start()
    return GradientServer(config, server, port, store, metrics, health_servicer, checkpointer)
