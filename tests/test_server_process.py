"""`python server/serve.py` as a real process: address line, health, reflection, /metrics,
graceful SIGTERM (with a drain), and a clear failure for a bad flag."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 60.0  # importing torch on a cold, busy 2-core machine
TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_environment() -> dict[str, str]:
    # gRPC logging as a user gets it by default (tests that want more set it themselves).
    unset = ("GRPC_VERBOSITY", "GRPC_TRACE")
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GRADSERVE_") and key not in unset
    }


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "server/serve.py", *args],
        cwd=ROOT,
        env={**clean_environment(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lines_of(stream) -> tuple[queue.Queue[str | None], threading.Thread]:
    """The stream's lines on a queue (None at the end), so reads can have a deadline."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return lines, reader


@pytest.fixture
def process() -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    metrics_port = free_port()
    with started("--port", "0", "--metrics-port", str(metrics_port)) as (child, address):
        yield child, address, metrics_port


@contextmanager
def started(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """serve.py with `args`, once it printed its address; killed afterwards if still alive."""
    child = serve(*args, env=env)
    lines, reader = lines_of(child.stdout)
    try:
        address = None
        while address is None:
            try:
                line = lines.get(timeout=STARTUP_SECONDS)
            except queue.Empty:
                pytest.fail("no 'listening on' line in time")
            assert line is not None, f"server exited: {child.stderr.read()}"
            if line.startswith("listening on "):
                address = line.removeprefix("listening on ").strip()
        assert address.startswith("127.0.0.1:")
        yield child, address
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=TIMEOUT)
        reader.join(timeout=TIMEOUT)  # the child is gone: its stdout is at its end
        child.stdout.close()
        child.stderr.close()


def test_serves_health_reflection_metrics_and_stops_on_sigterm(process) -> None:
    child, address, metrics_port = process
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "gradserve.v1.GradientService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert response.status == health_pb2.HealthCheckResponse.SERVING

        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "gradserve.v1.GradientService" in services
        assert "grpc.health.v1.Health" in services

        info = pb_grpc.GradientServiceStub(channel).GetModelInfo(
            pb.GetModelInfoRequest(), timeout=TIMEOUT
        )
        assert info.model == "linear"

    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    assert "grpc_server_handled_total{" in text
    assert 'grpc_method="GetModelInfo"' in text
    assert 'gradserve_model_version{run=""} 0.0' in text
    assert "process_resident_memory_bytes " in text
    assert "python_info{" in text

    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 0


def test_a_bad_model_exits_non_zero_with_one_clear_line() -> None:
    child = serve("--port", "0", "--metrics-port", "0", "--model", "resnet:9")
    stdout, stderr = child.communicate(timeout=STARTUP_SECONDS)
    assert child.returncode not in (0, None)
    assert "listening" not in stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "model" in lines[0]
    assert "resnet" in lines[0]
    assert "Traceback" not in stderr


def test_sigterm_right_after_the_address_line_stops_gracefully() -> None:
    """The address line is the readiness signal a supervisor waits for: a SIGTERM sent the
    moment it appears gets the graceful stop (exit 0), never the default action (-15)."""
    with started("--port", "0", "--metrics-port", "0") as (child, _):
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=STARTUP_SECONDS) == 0, child.stderr.read()


def test_grpc_core_info_lines_stay_out_of_the_server_log() -> None:
    """GRPC_TRACE=api logs every gRPC core call at INFO (as a GOAWAY at shutdown is logged);
    with GRPC_VERBOSITY unset the server keeps gRPC core at ERROR, so its log is its own."""
    quiet = {"GRPC_TRACE": "api"}
    with started("--port", "0", "--metrics-port", "0", env=quiet) as (child, address):
        assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=STARTUP_SECONDS) == 0
        stderr = child.stderr.read()
    assert "grpc_init" not in stderr
    assert "trace.cc" not in stderr


def health_status(address: str) -> int:
    """One Check on a NEW channel, as a load balancer's probe opens one."""
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT).status


def test_sigterm_drains_with_not_serving_while_still_serving() -> None:
    # A drain far longer than the test: the second SIGTERM ends it, so nothing races a timer.
    with started("--port", "0", "--metrics-port", "0", "--drain-seconds", "120") as (
        child,
        address,
    ):
        assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
        child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while health_status(address) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "health never went NOT_SERVING"
            assert child.poll() is None, "the server stopped instead of draining"
            time.sleep(0.05)  # polling another process: there is no event to wait on
        with grpc.insecure_channel(address) as channel:  # new connections are still served
            info = pb_grpc.GradientServiceStub(channel).GetModelInfo(
                pb.GetModelInfoRequest(), timeout=TIMEOUT
            )
        assert info.model == "linear"
        assert child.poll() is None
        child.send_signal(signal.SIGTERM)  # the second signal ends the drain
        assert child.wait(timeout=30) == 0
