"""Retries without double-apply: answers lost on the way back are retried with the same
request_id and replayed by the server, never applied twice; cancelled calls are skipped."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch
from helpers import TIMEOUT, compute, decoded, linear_batch
from proxy import FaultyProxy

from gradserve.client.config import ScheduleConfig, TrainConfig, TransportConfig
from gradserve.client.data import seed_data
from gradserve.client.gradient_client import GradientClient, RetryPolicy
from gradserve.client.loop import train
from gradserve.client.metrics import TrainMetrics
from gradserve.client.recorder import Recorder
from gradserve.client.session import make_plan, make_transport
from gradserve.codec import tensor_to_proto
from gradserve.v1 import gradserve_pb2 as pb

CONFIG = TrainConfig(
    schedule=ScheduleConfig(epochs=10, batch_size=10, learning_rate=0.01),
    transport=TransportConfig(kind="unary"),
)


def train_through(address: str) -> tuple[int, dict[str, torch.Tensor]]:
    seed = seed_data(CONFIG.data.seed, CONFIG.data.samples)
    retry = RetryPolicy(max_attempts=10, initial_backoff=0.001, max_backoff=0.01)
    with GradientClient(address, timeout=10.0, retry=retry) as client:
        train(
            client,
            make_plan(CONFIG, seed.dataset),
            make_transport(client, CONFIG),
            Recorder(TrainMetrics("test", "linear")),
            initial={"w": seed.initial_w, "b": seed.initial_b},
        )
        return client.get_parameters()


def replayed(server, method: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "gradserve_replayed_requests_total", {"grpc_method": method}
    )
    return value or 0.0


def test_lost_answers_are_retried_and_replayed_not_reapplied(make_server) -> None:
    clean = make_server()
    expected_version, expected = train_through(clean.address)

    lossy = make_server()
    with FaultyProxy(lossy.address, drop_fraction=0.3, seed=3) as proxy:
        version, parameters = train_through(proxy.address)
        dropped = list(proxy.dropped)

    assert version == expected_version
    for name, value in expected.items():
        assert torch.equal(parameters[name], value), name
    assert all(d.forwarded for d in dropped)
    for method in ("ComputeGradients", "ApplyUpdate"):
        lost = sum(1 for d in dropped if d.method == method)
        assert lost > 10, f"too few {method} answers dropped to mean anything: {lost}"
        # Each lost answer was run once by the server, and its retry answered from the window.
        assert replayed(lossy, method) == lost


def test_a_call_cancelled_while_queued_is_skipped(make_server, make_stub) -> None:
    # One worker and no stream threads (the pool has --workers + --max-streams threads): the
    # second call waits in the queue while the first waits for the lock.
    server = make_server(workers=1, max_streams=0)
    stub = make_stub(server)
    x, y = linear_batch(4)
    store = server.store
    workers_before = set(workers())
    store._lock.acquire()
    try:
        first = stub.ComputeGradients.future(compute_request(x, y, "first"), timeout=TIMEOUT)
        # The one worker thread exists once the first call was handed to it (bounded poll).
        deadline = time.monotonic() + 10
        while not set(workers()) - workers_before:
            assert time.monotonic() < deadline, "the first call never reached a worker"
            time.sleep(0.005)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ComputeGradients(compute_request(x, y, "second"), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        store._lock.release()
    assert first.result().accumulated_batches == 1
    # The second call reached a worker only after its caller had given up: nothing accumulated.
    after = compute(stub, x, y)
    assert after.accumulated_batches == 2
    assert store.info().accumulated_batches == 2


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gradserve")]


def compute_request(x: torch.Tensor, y: torch.Tensor, request_id: str):
    return pb.ComputeGradientsRequest(
        inputs=tensor_to_proto(x), targets=tensor_to_proto(y), request_id=request_id
    )


def test_the_accumulator_is_never_half_updated(make_server, make_stub) -> None:
    """Readers never see some parameters' gradients added and others not: every batch's
    gradients are added under the one lock, after all of them are computed and checked."""
    server = make_server(model="mlp:4-16-3")
    stub = make_stub(server)
    stop = threading.Event()
    torn: list[str] = []
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(8, 4, generator=generator)
    y = torch.randint(0, 3, (8,), generator=generator)

    one = decoded(compute(stub, x, y, return_gradients=True).gradients)

    def watch() -> None:
        # Every batch is the same, so every parameter's .grad is k times one batch's, for
        # the same k across parameters in any one (locked) snapshot.
        while not stop.is_set():
            gradients = server.store.gradients()
            ratios = {
                name: float(g.norm() / one[name].norm())
                for name, g in gradients.items()
                if g is not None
            }
            if max(ratios.values()) - min(ratios.values()) > 1e-3:
                torn.append(str(ratios))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(60):
            compute(stub, x, y)
    finally:
        stop.set()
        watcher.join()
    assert not torn, torn[:3]
