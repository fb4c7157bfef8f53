"""Server-side data parallelism: W = 2 gloo ranks on loopback match one process; a dead rank
makes the server NOT_SERVING and its calls UNAVAILABLE within a bound."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradserve.client.data import seed_data
from gradserve.client.gradient_client import NO_RETRY, GradientClient
from gradserve.errors import FailedPreconditionError, UnavailableError
from gradserve.types import TrainStep

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SERVE = [sys.executable, "server/serve.py", "--port", "0", "--metrics-port", "0"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _address(process: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """The address rank 0 prints ("listening on HOST:PORT"), read with a deadline."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        if line.startswith("listening on "):
            return line.removeprefix("listening on ").strip()


@contextmanager
def ranks(world_size: int, *arguments: str, **environment: str) -> Iterator[tuple[str, list]]:
    """World_size server ranks started with torchrun's environment (no agent, so the test
    knows each rank's process); yields rank 0's address and the processes."""
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world_size),
        "OMP_NUM_THREADS": "1",
        **environment,
    }
    processes = [
        subprocess.Popen(
            [*SERVE, *arguments],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
            text=True,
        )
        for rank in range(world_size)
    ]
    try:
        yield _address(processes[0]), processes
    finally:
        processes[0].send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def test_two_ranks_match_one_process(make_server) -> None:
    single = make_server(model="mlp:4-8-3")
    torch.manual_seed(0)
    inputs, targets = torch.randn(7, 4), torch.randint(0, 3, (7,))
    with (
        ranks(2, "--model", "mlp:4-8-3") as (address, _),
        GradientClient(address, timeout=30.0) as two,
        GradientClient(single.address, timeout=10.0) as one,
    ):
        two.wait_until_ready(30.0)
        # An odd batch: the ranks' shards are 4 and 3 rows.
        a = two.compute_gradients(inputs, targets, return_gradients=True)
        b = one.compute_gradients(inputs, targets, return_gradients=True)
        assert abs(a.loss - b.loss) < 1e-6
        for name, gradient in b.gradients.items():
            torch.testing.assert_close(a.gradients[name], gradient, atol=1e-6, rtol=0)
        two.apply_update(0.1)
        one.apply_update(0.1)
        # Parameters set on rank 0 reach rank 1: the next gradients still agree.
        _, values = one.get_parameters()
        two.set_parameters({name: value * 0.5 for name, value in values.items()})
        one.set_parameters({name: value * 0.5 for name, value in values.items()})
        a = two.compute_gradients(inputs[:1], targets[:1], return_gradients=True)
        b = one.compute_gradients(inputs[:1], targets[:1], return_gradients=True)
        for name, gradient in b.gradients.items():
            torch.testing.assert_close(a.gradients[name], gradient, atol=1e-6, rtol=0)


def test_two_ranks_seed_run_matches_one_process(make_server) -> None:
    """The seed tutorial (linear model, batches of 10 and one of 7) for 20 epochs."""
    seed = seed_data(0, samples=97)
    single = make_server()
    with ranks(2) as (address, _):
        results = []
        for target in (address, single.address):
            with GradientClient(target, timeout=30.0) as client:
                client.wait_until_ready(30.0)
                client.set_parameters({"w": seed.initial_w, "b": seed.initial_b})
                for _ in range(20):
                    for start in range(0, 97, 10):
                        client.compute_gradients(
                            seed.dataset.inputs[start : start + 10],
                            seed.dataset.targets[start : start + 10],
                        )
                        client.apply_update(0.01)
                results.append(client.get_parameters())
    (version_two, two), (version_one, one) = results
    assert version_two == version_one == 201
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, atol=1e-6, rtol=0)


def test_dead_rank_makes_the_server_not_serving_and_calls_unavailable() -> None:
    bound = 15.0
    with ranks(
        2,
        GRADSERVE_DISTRIBUTED_TIMEOUT_SECONDS="5",
        GRADSERVE_DISTRIBUTED_HEARTBEAT_SECONDS="0.5",
    ) as (address, processes):
        x = torch.rand(4, 1)
        with GradientClient(address, timeout=30.0, retry=NO_RETRY) as client:
            client.wait_until_ready(30.0)
            client.compute_gradients(x, 2 * x)
            processes[1].kill()
            processes[1].wait()
            killed = time.monotonic()
            channel = grpc.insecure_channel(address)
            health = health_pb2_grpc.HealthStub(channel)
            status = None
            # Polls the health endpoint: the bound is what is tested.
            while time.monotonic() - killed < bound:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.1)
            channel.close()
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(UnavailableError):
                client.compute_gradients(x, 2 * x)
            assert time.monotonic() - killed < bound


def test_two_ranks_refuse_seeds_and_change_nothing() -> None:
    # One rank's generator cannot draw the other ranks' masks: a seed there is refused.
    torch.manual_seed(0)
    inputs, targets = torch.randn(4, 4), torch.randint(0, 3, (4,))
    with (
        ranks(2, "--model", "mlp:4-8-3:dropout=0.5") as (address, _),
        GradientClient(address, timeout=30.0) as client,
    ):
        client.wait_until_ready(30.0)
        with pytest.raises(FailedPreconditionError, match="seed"):
            client.compute_gradients(inputs, targets, seed=1)
        step = TrainStep.of([(inputs, targets)], 0.1, seed=1)
        with pytest.raises(FailedPreconditionError, match="seed"):
            list(client.train_stream([[step]]))
        info = client.model_info()
        assert (info.model_version, info.accumulated_batches) == (0, 0)
