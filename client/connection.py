"""Connecting the trainer: a GradientClient to --server, or to an embedded server.

`embedded_server_config` is the one place the client builds a gradserve.server config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from ..server.app import create_server
from ..server.config import (
    CoordinationConfig,
    ModelConfig,
    NetworkConfig,
    RuntimeConfig,
    ServerConfig,
)
from .config import TrainConfig
from .connection_flags import open_client
from .gradient_client import GradientClient


def embedded_server_config(config: TrainConfig, *, sync_workers: int = 0) -> ServerConfig:
    """A loopback server on a free port for this run; with sync_workers, in sync mode with a
    round of sync_workers * accumulation_steps contributions (one per batch of each worker)."""
    base = ServerConfig(
        network=NetworkConfig(host="127.0.0.1", port=0, metrics_port=0),
        model=ModelConfig(
            spec=config.embedded.model,
            loss=config.embedded.loss,
            optimizer=config.embedded.optimizer,
            seed=config.data.seed,
            model_factories=config.embedded.model_factories,
        ),
        runtime=RuntimeConfig(shutdown_grace_seconds=1.0),
    )
    if not sync_workers:
        return base
    return dataclasses.replace(
        base,
        runtime=dataclasses.replace(base.runtime, workers=max(8, 2 * sync_workers + 2)),
        coordination=CoordinationConfig(
            mode="sync",
            sync_contributions=sync_workers * config.schedule.accumulation_steps,
            sync_timeout_seconds=config.connection.timeout_seconds,
        ),
    )


def client_for(config: TrainConfig, target: str) -> GradientClient:
    return open_client(config.connection, target, config.run.name)


@contextmanager
def connect(config: TrainConfig, *, sync_workers: int = 0) -> Iterator[tuple[GradientClient, str]]:
    """A ready client to --server, or to an embedded server that lives as long as the block;
    and how to name where it is ("embedded 127.0.0.1:PORT" or the address)."""
    embedded = None
    target = config.connection.server
    if target is None:
        embedded = create_server(embedded_server_config(config, sync_workers=sync_workers))
        target = embedded.address
    client = client_for(config, target)
    try:
        client.wait_until_ready(config.connection.connect_timeout_seconds)
        yield client, ("embedded " if embedded else "") + target
    finally:
        client.close()
        if embedded is not None:
            embedded.stop(0)
