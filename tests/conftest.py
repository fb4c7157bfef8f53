"""Shared fixtures: real gradserve servers on free loopback ports, real channels to them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest

from gradserve.defaults import channel_options
from gradserve.server.app import GradientServer, create_server
from gradserve.server.config import NetworkConfig, ServerConfig
from gradserve.v1 import gradserve_pb2_grpc

ServerFactory = Callable[..., GradientServer]


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    """make_server(**settings) starts a server on 127.0.0.1:0; all stop after the test.

    Settings by their flat (flag) names, e.g. mode="sync", checkpoint_dir=...; they apply on
    top of the port-0 network section."""
    started: list[GradientServer] = []

    def make(**overrides: object) -> GradientServer:
        config = ServerConfig(network=NetworkConfig(port=0, metrics_port=0)).with_flat(**overrides)
        running = create_server(config)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop(0)


@pytest.fixture
def server(make_server: ServerFactory) -> GradientServer:
    return make_server()


@pytest.fixture
def make_stub() -> Iterator[Callable[[GradientServer], gradserve_pb2_grpc.GradientServiceStub]]:
    channels: list[grpc.Channel] = []

    def make(running: GradientServer) -> gradserve_pb2_grpc.GradientServiceStub:
        channel = grpc.insecure_channel(
            running.address, options=channel_options(running.config.limits.max_message_bytes)
        )
        channels.append(channel)
        return gradserve_pb2_grpc.GradientServiceStub(channel)

    yield make
    for channel in channels:
        channel.close()


@pytest.fixture
def stub(
    server: GradientServer,
    make_stub: Callable[[GradientServer], gradserve_pb2_grpc.GradientServiceStub],
) -> gradserve_pb2_grpc.GradientServiceStub:
    return make_stub(server)
