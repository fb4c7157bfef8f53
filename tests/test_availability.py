"""No small request can starve the server: with 64 idle Train streams and 64 unfinished uploads
open, health and GetModelInfo still answer within 100 ms p99, a seed trainer completes (bitwise
the local loop), and the server's memory stays bounded.

The server runs as its own process (`python server/serve.py`, default --workers 8 and
--max-streams 64) so its RSS is its own. The streams past --max-streams are refused at once
with RESOURCE_EXHAUSTED, and the trainer, refused a Train stream, trains over unary calls.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_train_cli import assert_parameters_equal, seed_loop

from gradserve.chunks import tensor_to_chunks
from gradserve.defaults import channel_options
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 120.0
IDLE_STREAMS = 64
HANGING_UPLOADS = 64
PROBES = 200
# What the server process may hold with all of that open: torch and the model (~250 MB
# here) plus the open streams' threads and buffers.
RSS_BOUND_MB = 600


def clean_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("GRADSERVE_")}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def server_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    child = subprocess.Popen(
        [sys.executable, "server/serve.py", "--port", "0", "--metrics-port", "0"],
        cwd=ROOT,
        env=clean_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        address = None
        while address is None:
            line = lines.get(timeout=STARTUP_SECONDS)
            assert line is not None, "the server exited"
            if line.startswith("listening on "):
                address = line.removeprefix("listening on ").strip()
        yield child, address
    finally:
        child.kill()
        child.wait(timeout=30)
        reader.join(timeout=30)
        assert child.stdout is not None
        child.stdout.close()


class HeldStreams:
    """Streams that the test keeps open and never finishes (each request iterator blocks on
    an event), ended together at the end."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[grpc.Future] = []

    def requests(self, first: list[object]) -> Iterator[object]:
        yield from first
        self.release.wait(120)

    def close(self) -> None:
        self.release.set()
        for call in self.calls:
            call.cancel()


def test_idle_streams_and_hanging_uploads_do_not_starve_short_calls(
    server_process: tuple[subprocess.Popen[str], str],
) -> None:
    child, address = server_process
    held = HeldStreams()
    channel = grpc.insecure_channel(address, options=channel_options())
    stub = pb_grpc.GradientServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        # 64 Train streams that send nothing, and 64 uploads stopped after their first chunk.
        w = torch.zeros(1)
        chunk = next(iter(tensor_to_chunks("w", w, 1024, message=pb.UploadParametersRequest)))
        for _ in range(IDLE_STREAMS):
            held.calls.append(stub.Train(held.requests([])))
        for _ in range(HANGING_UPLOADS):
            held.calls.append(stub.UploadParameters.future(held.requests([chunk])))

        # Every short call still answers: p99 within 100 ms.
        latencies = []
        for index in range(PROBES):
            started = time.perf_counter()
            if index % 2:
                health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            else:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            latencies.append(time.perf_counter() - started)
        p99 = statistics.quantiles(latencies, n=100)[98]
        assert p99 < 0.1, f"p99 {p99 * 1000:.1f} ms"

        # A seed trainer completes, bitwise the local loop (over unary calls: no stream left).
        done = subprocess.run(
            [sys.executable, "client/train.py", "--server", address, "--epochs", "3", "--json"],
            cwd=ROOT,
            env=clean_environment(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "goes on over unary calls" in done.stderr
        assert_parameters_equal(
            json.loads(done.stdout.strip().splitlines()[-1]), seed_loop(epochs=3)
        )

        assert rss_mb(child.pid) < RSS_BOUND_MB
    finally:
        held.close()
        channel.close()
