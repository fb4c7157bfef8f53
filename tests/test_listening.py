"""One server per port (a busy gRPC or metrics port is one line and exit 2, as real processes),
idle connections closed after --connection-idle-seconds, connections bounded in count."""

from __future__ import annotations

import socket
import threading

import grpc
import pytest
from test_server_process import started
from test_startup_errors import assert_one_line_exit_2, run

from gradserve.server.flags import parse_args
from gradserve.server.listening import server_options
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

TIMEOUT = 30.0


def test_a_second_server_on_a_busy_grpc_port_exits_2_with_one_line() -> None:
    with started("--port", "0", "--metrics-port", "0") as (first, address):
        port = address.rpartition(":")[2]
        second = run("server/serve.py", "--port", port, "--metrics-port", "0")
        assert_one_line_exit_2(second, "--port", port, "in use")
        assert "listening" not in second.stdout
        assert first.poll() is None  # the first server keeps its port and keeps serving


def test_a_busy_metrics_port_exits_2_with_one_line() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        result = run("server/serve.py", "--port", "0", "--metrics-port", port)
    assert_one_line_exit_2(result, "--metrics-port", port, "in use")
    assert "listening" not in result.stdout


def test_so_reuseport_is_off_and_connections_are_bounded_by_default() -> None:
    options = dict(server_options(parse_args([], environ={}).network))
    assert options["grpc.so_reuseport"] == 0
    assert options["grpc.max_connection_idle_ms"] == 300_000
    assert options["grpc.max_allowed_incoming_connections"] == 1024


def channel_to(address: str) -> grpc.Channel:
    # Each its own connection: channels otherwise share one from the global pool.
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def test_an_idle_connection_is_closed(make_server) -> None:
    server = make_server(connection_idle_seconds=0.2)
    with channel_to(server.address) as channel:
        pb_grpc.GradientServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
        went_idle = threading.Event()

        def watch(state: grpc.ChannelConnectivity) -> None:
            # READY while connected; the server's GOAWAY for idleness takes it back to IDLE.
            if state == grpc.ChannelConnectivity.IDLE:
                went_idle.set()

        channel.subscribe(watch)
        try:
            assert went_idle.wait(TIMEOUT), "the server never closed the idle connection"
        finally:
            channel.unsubscribe(watch)
        # The client reconnects on its next call.
        info = pb_grpc.GradientServiceStub(channel).GetModelInfo(
            pb.GetModelInfoRequest(), timeout=TIMEOUT
        )
        assert info.model == "linear"


def test_connections_past_the_limit_are_refused(make_server) -> None:
    server = make_server(max_connections=2)
    channels = [channel_to(server.address) for _ in range(3)]
    try:
        for channel in channels[:2]:
            stub = pb_grpc.GradientServiceStub(channel)
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.GradientServiceStub(channels[2]).GetModelInfo(
                pb.GetModelInfoRequest(), timeout=TIMEOUT
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for channel in channels:
            channel.close()
