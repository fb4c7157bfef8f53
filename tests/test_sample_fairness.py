"""Sample streams in progress leave health and short calls served; a cancelled Sample call
stops the server's work. Real servers on port 0; the gated model (sampling_factories.GATE)
holds the server's forwards, so 'in progress' is observed, never waited out."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sampling_factories import GATE, ForwardGate
from test_sampling_engine import PROMPT

from gradserve import serde_sampling
from gradserve.sampling_types import SamplingParams
from gradserve.server.app import GradientServer
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc
from tests.conftest import ServerFactory

FACTORY = ("gatedlm=sampling_factories:gated_llama",)
DEADLINE = 30.0
STREAMS = 32


@pytest.fixture
def gate() -> Iterator[ForwardGate]:
    yield GATE
    GATE.set_open(True)  # whatever the test did, no forward stays held


def sampling_server(make_server: ServerFactory, **limits: int) -> GradientServer:
    return make_server(model="gatedlm", model_factories=FACTORY, **limits)


def request(max_tokens: int) -> pb.SampleRequest:
    params = SamplingParams(num_samples=2, max_tokens=max_tokens, seed=1)
    return serde_sampling.sample_request_to_proto("", PROMPT, params)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll a real signal of the server until it holds, within DEADLINE (no fixed sleeps)."""
    end = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < end, f"not within {DEADLINE} s: {what}"
        time.sleep(0.01)


def test_32_sample_streams_in_progress_leave_health_and_short_calls_served(
    make_server: ServerFactory, gate: ForwardGate
) -> None:
    server = sampling_server(make_server, max_concurrent_samples=STREAMS)
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.GradientServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    gate.set_open(False)
    calls = [stub.Sample(request(max_tokens=5), timeout=DEADLINE) for _ in range(STREAMS)]
    try:
        # Every call is inside the server's work: its handler thread is held in a forward.
        assert gate.wait_until(lambda g: g.waiting == STREAMS, DEADLINE), gate.waiting
        assert server.streams.active == STREAMS
        for _ in range(10):
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)
            assert info.model_version == 0
        gate.set_open(True)
        for call in calls:
            tokens = [len(response.tokens) for response in call]
            assert tokens == [2] * 5
    finally:
        gate.set_open(True)
        for call in calls:
            call.cancel()
        channel.close()


def test_cancelling_a_sample_call_stops_the_servers_work(
    make_server: ServerFactory, gate: ForwardGate
) -> None:
    server = sampling_server(make_server, max_concurrent_samples=1)
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.GradientServiceStub(channel)
    try:
        gate.set_open(False)
        start = gate.forwards
        long_call = stub.Sample(request(max_tokens=50), timeout=DEADLINE)
        assert gate.wait_until(lambda g: g.waiting == 1, DEADLINE)
        long_call.cancel()
        gate.set_open(True)
        # The handler returns (its stream and its sampling place freed) once the engine sees
        # the cancellation, before its next forward.
        wait_for(lambda: server.streams.active == 0, "the cancelled stream's handler returns")
        assert gate.forwards - start <= 2, gate.forwards - start
        with pytest.raises(grpc.RpcError) as cancelled:
            list(long_call)
        assert cancelled.value.code() == grpc.StatusCode.CANCELLED
        # Its place under --max-concurrent-samples 1 is free: the next call runs whole.
        answers = list(stub.Sample(request(max_tokens=3), timeout=DEADLINE))
        assert [len(response.tokens) for response in answers] == [2, 2, 2]
    finally:
        gate.set_open(True)
        channel.close()
