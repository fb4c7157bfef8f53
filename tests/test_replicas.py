"""`gradserve-server --replicas 2`: two server processes behind nginx, started and supervised by
one parent, all on loopback. A run's calls all reach the replica the ring names (placed by name
alone, as server/replicas/placement.py predicts) and train as the local torch loop; health is
SERVING only while every replica answers; ListRuns through the proxy lists every replica's
runs; the parent leaves no process behind, whether it is
stopped, loses a replica or is killed; bad --replicas values, a missing nginx, a busy port
and TLS exit 2.

Skips the process tests when nginx is missing (scripts/install-proxy-deps.sh installs it).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gradserve.client.gradient_client import NO_RETRY, GradientClient
from gradserve.server.replicas.placement import murmur_hash2, replica_for, ring

ROOT = Path(__file__).resolve().parent.parent
NGINX = Path("/usr/sbin/nginx")
STARTUP_SECONDS = 120.0  # two processes importing torch on a busy 2-core machine
TIMEOUT = 10.0
STEPS = 6
REPLICA_LINE = re.compile(r"replica (\d+): pid (\d+), listening on (\S+)")
# Eight names the ring spreads over both replicas (asserted below, not assumed).
NAMES = [f"run-{index}" for index in range(8)]

needs_nginx = pytest.mark.skipif(
    not NGINX.is_file(), reason=f"{NGINX} is not installed (run scripts/install-proxy-deps.sh)"
)


@dataclass
class ReplicaSet:
    process: subprocess.Popen[str]
    address: str = ""
    replicas: dict[int, tuple[int, str]] = field(default_factory=dict)  # index -> (pid, address)
    stderr: Path = Path()

    def errors(self) -> str:
        return self.stderr.read_text()[-3000:]


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GRADSERVE_")}


@contextmanager
def replica_set(tmp_path: Path, *extra: str) -> Iterator[ReplicaSet]:
    """`server/serve.py --replicas 2 --port 0`, read until its `listening on` line."""
    stderr_path = tmp_path / "set.err"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "server/serve.py", "--replicas", "2", "--port", "0",
             "--metrics-port", "0", "--log-level", "WARNING", *extra],
            cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    found = ReplicaSet(process, stderr=stderr_path)
    try:
        while not found.address:
            try:
                line = lines.get(timeout=STARTUP_SECONDS)
            except queue.Empty:
                pytest.fail(f"no 'listening on' line in time: {found.errors()}")
            assert line is not None, f"the set exited: {found.errors()}"
            if match := REPLICA_LINE.match(line):
                found.replicas[int(match[1])] = (int(match[2]), match[3])
            elif line.startswith("listening on "):
                found.address = line.removeprefix("listening on ").strip()
        assert sorted(found.replicas) == [0, 1]
        yield found
    finally:
        if process.poll() is None:
            process.kill()  # the children follow it (PR_SET_PDEATHSIG)
        process.wait(timeout=TIMEOUT)
        reader.join(timeout=TIMEOUT)
        process.stdout.close()  # type: ignore[union-attr]


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (nginx's workers included)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, dead and not yet reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.05)


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT
        )
    return int(answer.status)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(10, 1, generator=generator)
    return x, 2 * x + 1 + 0.1 * torch.randn(10, 1, generator=generator)


def oracle(start: dict[str, torch.Tensor], lr: float) -> dict[str, torch.Tensor]:
    """The linear model's loop, locally: MSE, backward, p -= lr * p.grad."""
    w, b = (start[name].clone().requires_grad_() for name in ("w", "b"))
    for seed in range(STEPS):
        x, y = batch(seed)
        ((w * x + b - y) ** 2).mean().backward()
        with torch.no_grad():
            for parameter in (w, b):
                parameter.sub_(lr * parameter.grad)  # type: ignore[operator]
                parameter.grad.zero_()  # type: ignore[union-attr]
    return {"w": w.detach(), "b": b.detach()}


def runs_on(address: str) -> set[str]:
    with GradientClient(address, timeout=TIMEOUT) as client:
        return {summary.run for summary in client.list_runs()}


def test_the_ring_places_by_name_alone_and_a_new_replica_only_takes_runs() -> None:
    assert murmur_hash2(b"") == 0 and murmur_hash2(b"abc") == 0x13577C9B
    names = [f"run-{index}" for index in range(2000)]
    for count in (2, 3, 4):
        assert replica_for("", count) == 0  # the default run: no header, replica 0
        placed = [replica_for(name, count) for name in names]
        assert set(placed) == set(range(count))
        grown = [replica_for(name, count + 1) for name in names]
        # Consistent hashing: a run moves only onto the new replica, never between old ones.
        assert all(new in (old, count) for old, new in zip(placed, grown, strict=True))
        assert sum(share.steps for share in ring(count)) < 10_000


def test_bad_replica_counts_exit_2_naming_the_flag() -> None:
    for argv, env in ((["--replicas", "0"], {}), (["--replicas", "two"], {}),
                      ([], {"GRADSERVE_REPLICAS": "65"})):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "server/serve.py", *argv], cwd=ROOT, env={**environment(), **env},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 2, (argv, env, result.stderr)
        assert "argument --replicas" in result.stderr, result.stderr


def test_a_missing_nginx_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-nginx"
    result = subprocess.run(
        [sys.executable, "server/serve.py", "--replicas", "2", "--port", "0",
         "--metrics-port", "0", "--nginx", str(missing)],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"--nginx {missing}" in result.stderr and "install-proxy-deps" in result.stderr
    assert result.stdout == ""  # nothing started


def test_a_busy_port_exits_2_naming_it_before_any_replica_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "server/serve.py", "--replicas", "2", "--port", str(port),
             "--metrics-port", "0"],
            cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"--port {port}" in result.stderr and "already in use" in result.stderr
    assert result.stdout == ""


def test_tls_with_replicas_is_refused_before_anything_starts(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "server/serve.py", "--replicas", "2", "--port", "0", "--metrics-port",
         "0", "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--replicas: TLS" in result.stderr
    assert result.stdout == ""


@needs_nginx
def test_each_runs_calls_reach_the_replica_its_name_places_it_on(tmp_path: Path) -> None:
    with replica_set(tmp_path) as found:
        with GradientClient(found.address, timeout=TIMEOUT, retry=NO_RETRY) as client:
            for seed, name in enumerate(NAMES):
                assert client.create_run(name, model="linear", seed=seed)[0] == name
        expected = {index: {""} for index in (0, 1)}
        for name in NAMES:
            expected[replica_for(name, 2)].add(name)
        assert all(len(names) > 1 for names in expected.values()), expected
        for index, (_, address) in found.replicas.items():
            assert runs_on(address) == expected[index]
        # ListRuns through the proxy: every replica's runs, the default run once (replica 0's).
        with GradientClient(found.address, timeout=TIMEOUT) as client:
            listed = [summary.run for summary in client.list_runs()]
        assert listed == sorted(["", *NAMES])
        # One run per replica trained through the proxy: every step answers the next version
        # (a call placed elsewhere would find no run, or another state) and the end state is
        # the local torch loop's, bitwise, and the digest its replica reports directly.
        trained = {next(n for n in NAMES if replica_for(n, 2) == i): i for i in (0, 1)}
        for name, index in trained.items():
            lr = 0.1 if index == 0 else 0.05
            with GradientClient(found.address, timeout=TIMEOUT, retry=NO_RETRY, run=name) as run:
                start = run.get_parameters()[1]
                for seed in range(STEPS):
                    assert run.compute_gradients(*batch(seed)).model_version == seed
                    assert run.apply_update(lr).model_version == seed + 1
                version, got = run.get_parameters()
                digest = run.state_digest()
            assert version == STEPS
            expected_parameters = oracle(start, lr)
            for key in ("w", "b"):
                assert torch.equal(got[key], expected_parameters[key]), (name, key)
            direct_address = found.replicas[index][1]
            with GradientClient(direct_address, timeout=TIMEOUT, run=name) as direct:
                assert direct.state_digest() == digest
        assert found.process.poll() is None


@needs_nginx
def test_health_is_serving_only_while_every_replica_answers(tmp_path: Path) -> None:
    with replica_set(tmp_path) as found:
        assert health(found.address) == health_pb2.HealthCheckResponse.SERVING
        stopped = found.replicas[1][0]
        os.kill(stopped, signal.SIGSTOP)
        try:
            assert health(found.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            os.kill(stopped, signal.SIGCONT)
        assert health(found.address) == health_pb2.HealthCheckResponse.SERVING


@needs_nginx
def test_sigterm_stops_the_set_and_leaves_no_process(tmp_path: Path) -> None:
    with replica_set(tmp_path) as found:
        children = descendants(found.process.pid)
        replica_pids = {pid for pid, _ in found.replicas.values()}
        # Two replicas, nginx's master and its worker at least.
        assert replica_pids < children and len(children) >= 4, children
        found.process.send_signal(signal.SIGTERM)
        assert found.process.wait(timeout=60) == 0, found.errors()
        assert not [pid for pid in children if alive(pid)]


@needs_nginx
def test_a_replica_that_dies_stops_the_whole_set(tmp_path: Path) -> None:
    with replica_set(tmp_path) as found:
        children = descendants(found.process.pid)
        os.kill(found.replicas[0][0], signal.SIGKILL)
        assert found.process.wait(timeout=60) == 1
        assert "replica 0" in found.errors() and "stopping the set" in found.errors()
        assert not [pid for pid in children if alive(pid)]


@needs_nginx
def test_a_killed_supervisor_takes_its_children_with_it(tmp_path: Path) -> None:
    with replica_set(tmp_path) as found:
        children = descendants(found.process.pid)
        found.process.kill()
        found.process.wait(timeout=TIMEOUT)
        # PR_SET_PDEATHSIG: each child gets SIGTERM as the parent dies (re-parented, then reaped
        # by init, hence the bound instead of a wait on them).
        wait_until(lambda: not [pid for pid in children if alive(pid)], "children gone")
