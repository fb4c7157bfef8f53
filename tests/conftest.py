"""Shared fixtures: real gradserve servers on free loopback ports, real channels to them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import grpc
import pytest

from gradserve.server.app import GradientServer, channel_options, create_server
from gradserve.server.config import ServerConfig
from gradserve.v1 import gradserve_pb2_grpc

ServerFactory = Callable[..., GradientServer]


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    """make_server(**config_overrides) starts a server on 127.0.0.1:0; all stop after the test."""
    started: list[GradientServer] = []

    def make(**overrides: object) -> GradientServer:
        config = dataclasses.replace(ServerConfig(port=0, metrics_port=0), **overrides)
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
            running.address, options=channel_options(running.config.max_message_bytes)
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
