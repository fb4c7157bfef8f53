"""Runs placed on replicas by a gRPC proxy that reads only the `gradserve-run` header: two
`server/serve.py` processes behind Debian's nginx (`map` on the header, `grpc_pass`), all on
loopback. Runs created through nginx land on the replica the map names and train there bitwise
as the local torch loop; a request whose header disagrees with its body is refused by the
server behind the proxy. The config is the one docs/scaling.md explains.

Skips when nginx is missing: scripts/install-proxy-deps.sh installs it (CI runs it).
"""

from __future__ import annotations

import os
import pwd
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import field_violations

from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.defaults import channel_options
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
NGINX = Path("/usr/sbin/nginx")
STARTUP_SECONDS = 60.0  # importing torch on a cold, busy 2-core machine
TIMEOUT = 10.0
RUN_HEADER = "gradserve-run"
STEPS = 8

# What docs/scaling.md shows, with the ports and paths of this test filled in.
NGINX_CONF = """\
{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    # The run's name, as every gradserve client sends it, picks the replica; runs whose name
    # starts with "b-" live on replica_b, every other run (and the default run) on replica_a.
    map $http_gradserve_run $backend {{
        default replica_a;
        ~^b-    replica_b;
    }}
    upstream replica_a {{ server {replica_a}; }}
    upstream replica_b {{ server {replica_b}; }}

    server {{
        listen 127.0.0.1:{port} http2;
        client_max_body_size 64m;   # the server's --max-message-bytes
        grpc_read_timeout 300s;     # Train streams and sync rounds may be quiet a while
        location / {{
            grpc_pass grpc://$backend;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition, what: str, seconds: float = STARTUP_SECONDS) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.05)


@contextmanager
def replica(log: Path) -> Iterator[str]:
    """`python server/serve.py --port 0`; yields the address it printed."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRADSERVE_")}
    with log.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "server/serve.py", "--port", "0", "--metrics-port", "0"],
            cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            for line in child.stdout:  # type: ignore[union-attr]
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            address = None
            while address is None:
                try:
                    line = lines.get(timeout=STARTUP_SECONDS)
                except queue.Empty:
                    pytest.fail(f"no 'listening on' line in time; {log.read_text()}")
                assert line is not None, f"server exited: {log.read_text()}"
                if line.startswith("listening on "):
                    address = line.removeprefix("listening on ").strip()
            assert address.startswith("127.0.0.1:")
            yield address
        finally:
            child.kill()
            child.wait(timeout=TIMEOUT)
            reader.join(timeout=TIMEOUT)
            child.stdout.close()  # type: ignore[union-attr]


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


@contextmanager
def nginx(prefix: Path, replica_a: str, replica_b: str) -> Iterator[str]:
    """nginx in the foreground with the config above; yields its address once it proxies."""
    port = free_port()
    # As root, nginx's workers switch to `nobody`, who cannot enter pytest's private tmp_path.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    config = prefix / "nginx.conf"
    config.write_text(
        NGINX_CONF.format(
            user=user, prefix=prefix, port=port, replica_a=replica_a, replica_b=replica_b
        )
    )
    check = subprocess.run(
        [str(NGINX), "-t", "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    child = subprocess.Popen(
        [str(NGINX), "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        # Health through the proxy: no header, so replica_a answers.
        wait_until(
            lambda: child.poll() is None and serving(address),
            f"nginx proxying on {address} ({(prefix / 'error.log').read_text()[-2000:]})",
        )
        yield address
    finally:
        child.terminate()  # SIGTERM: nginx's fast shutdown, workers included
        child.wait(timeout=TIMEOUT)


@pytest.fixture
def placement(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(nginx, replica_a, replica_b) addresses."""
    if not NGINX.is_file():
        pytest.skip(f"{NGINX} is not installed (run scripts/install-proxy-deps.sh)")
    with ExitStack() as stack:
        replica_a = stack.enter_context(replica(tmp_path / "replica-a.log"))
        replica_b = stack.enter_context(replica(tmp_path / "replica-b.log"))
        proxy = stack.enter_context(nginx(tmp_path, replica_a, replica_b))
        yield proxy, replica_a, replica_b


def batch(seed: int, size: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 1, generator=generator)
    return x, 2 * x + 1 + 0.1 * torch.randn(size, 1, generator=generator)


def oracle(start: dict[str, torch.Tensor], steps: int, lr: float) -> dict[str, torch.Tensor]:
    """The seed loop, locally: y_pred = w x + b, MSE, backward, w -= lr * w.grad, zero."""
    w = start["w"].clone().requires_grad_()
    b = start["b"].clone().requires_grad_()
    for seed in range(steps):
        x, y = batch(seed)
        ((w * x + b - y) ** 2).mean().backward()
        with torch.no_grad():
            for parameter in (w, b):
                parameter.sub_(lr * parameter.grad)  # type: ignore[operator]
                parameter.grad.zero_()  # type: ignore[union-attr]
    return {"w": w.detach(), "b": b.detach()}


def header(run: str) -> tuple[tuple[str, str], ...]:
    return ((RUN_HEADER, run),)


def parameters(stub: pb_grpc.GradientServiceStub, run: str) -> dict[str, torch.Tensor]:
    answer = stub.GetParameters(pb.GetParametersRequest(run=run), timeout=TIMEOUT,
                                metadata=header(run))  # fmt: skip
    return {t.name: tensor_from_proto(t).clone() for t in answer.parameters}


def runs_on(address: str) -> dict[str, int]:
    """The replica's own ListRuns, asked directly: run name -> version."""
    with grpc.insecure_channel(address, options=channel_options()) as channel:
        answer = pb_grpc.GradientServiceStub(channel).ListRuns(
            pb.ListRunsRequest(), timeout=TIMEOUT
        )
    return {summary.run: summary.model_version for summary in answer.runs}


def parameters_on(address: str, run: str) -> dict[str, torch.Tensor]:
    with grpc.insecure_channel(address, options=channel_options()) as channel:
        return parameters(pb_grpc.GradientServiceStub(channel), run)


def test_runs_land_where_the_header_map_says_and_train_as_local_torch(placement) -> None:
    proxy, replica_a, replica_b = placement
    learning_rates = {"a-run": 0.1, "b-run": 0.05}
    with grpc.insecure_channel(proxy, options=channel_options()) as channel:
        stub = pb_grpc.GradientServiceStub(channel)
        starts = {}
        for seed, run in enumerate(learning_rates, start=1):
            created = stub.CreateRun(
                pb.CreateRunRequest(run=run, model="linear", seed=seed),
                timeout=TIMEOUT, metadata=header(run),
            )  # fmt: skip
            assert created.run == run
            starts[run] = parameters(stub, run)
        for run, lr in learning_rates.items():
            for seed in range(STEPS):
                x, y = batch(seed)
                stub.ComputeGradients(
                    pb.ComputeGradientsRequest(
                        run=run, inputs=tensor_to_proto(x), targets=tensor_to_proto(y)
                    ),
                    timeout=TIMEOUT, metadata=header(run),
                )  # fmt: skip
                stub.ApplyUpdate(pb.ApplyUpdateRequest(run=run, learning_rate=lr),
                                 timeout=TIMEOUT, metadata=header(run))  # fmt: skip
        # Without the header the map's default applies: b-run is not on replica_a.
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelInfo(pb.GetModelInfoRequest(run="b-run"), timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    # Asked directly, each replica holds its run alone, at its version; defaults untouched.
    assert runs_on(replica_a) == {"": 0, "a-run": STEPS}
    assert runs_on(replica_b) == {"": 0, "b-run": STEPS}
    for run, address in (("a-run", replica_a), ("b-run", replica_b)):
        expected = oracle(starts[run], STEPS, learning_rates[run])
        got = parameters_on(address, run)
        for name in ("w", "b"):
            assert torch.equal(got[name], expected[name]), (run, name, got, expected)


def test_a_header_that_disagrees_with_the_body_is_refused_behind_the_proxy(placement) -> None:
    proxy, replica_a, replica_b = placement
    with grpc.insecure_channel(proxy, options=channel_options()) as channel:
        stub = pb_grpc.GradientServiceStub(channel)
        for run in ("a-run", "b-run"):
            stub.CreateRun(pb.CreateRunRequest(run=run, model="linear"), timeout=TIMEOUT,
                           metadata=header(run))  # fmt: skip
        x, y = batch(0)
        # Placed by the header on the other run's replica, naming a run in the body: the
        # server refuses by the mismatch (not NOT_FOUND), with the field named, and changes
        # nothing, whichever way round.
        for body, placed in (("a-run", "b-run"), ("b-run", "a-run")):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ComputeGradients(
                    pb.ComputeGradientsRequest(
                        run=body, inputs=tensor_to_proto(x), targets=tensor_to_proto(y)
                    ),
                    timeout=TIMEOUT, metadata=header(placed),
                )  # fmt: skip
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
            assert RUN_HEADER in (caught.value.details() or "")
            assert field_violations(caught.value) == ["run"]
        # The same mismatch on a replica that does hold the body's run is refused as well.
        with pytest.raises(grpc.RpcError) as caught:
            stub.ApplyUpdate(pb.ApplyUpdateRequest(run="a-run", learning_rate=0.1),
                             timeout=TIMEOUT, metadata=header("a-other"))  # fmt: skip
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    for address, run in ((replica_a, "a-run"), (replica_b, "b-run")):
        assert runs_on(address) == {"": 0, run: 0}
        with grpc.insecure_channel(address, options=channel_options()) as channel:
            info = pb_grpc.GradientServiceStub(channel).GetModelInfo(
                pb.GetModelInfoRequest(run=run), timeout=TIMEOUT
            )
        assert info.accumulated_batches == 0
