"""docker compose, for real: build the image, `docker-compose up` server and trainer on a private
Docker engine, watch them with Debian's Prometheus, and evaluate the Grafana dashboard's queries.

Every container uses host networking (a compose file derived from docker-compose.yml, ports
picked free on 127.0.0.1), so nothing leaves loopback. Run alone: `pytest -m docker`.
"""

from __future__ import annotations

import functools
import http.server
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomllib
from docker_engine import DockerEngine, run_command

from gradserve.v1 import gradserve_pb2, gradserve_pb2_grpc

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
PROMETHEUS_FILE = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "gradserve.json"
DATASOURCE_UID = "gradserve-prometheus"
IMAGE = "gradserve:compose-test"
PROJECT = "gradservetest"
# Time limits, each with its own failure message.
BUILD_TIMEOUT = 900
UP_TIMEOUT = 240
TRAINER_TIMEOUT = 300
PROMETHEUS_READY_TIMEOUT = 60
# Training that converges on the seed problem (y = 2x + 1) in a few seconds.
TRAIN_ENV = {
    "GRADSERVE_TRAIN_EPOCHS": "200",
    "GRADSERVE_TRAIN_LR": "0.1",
    "GRADSERVE_TRAIN_LINGER": "6",
}
SCRAPE_INTERVAL = "1s"
# What Grafana would substitute for a 1 s scrape interval, with room to spare.
RATE_INTERVAL = "10s"


# --- small helpers -------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    """YAML through PyYAML, or through Debian's python3-yaml (docker-compose depends on it)."""
    try:
        import yaml  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        result = run_command(
            ["/usr/bin/python3", "-c",
             "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
            input_text=path.read_text(), timeout=30,
        )  # fmt: skip
        return json.loads(result.stdout)
    return yaml.safe_load(path.read_text())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


class QuietFileHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def wheelhouse() -> Iterator[str]:
    """The image's dependencies, fetched by the host's pip (its index and certificates), served
    on 127.0.0.1 as a find-links page for the build (which runs with host networking)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    # The build backend too: the image installs gradserve itself without build isolation.
    requirements = meta["project"]["dependencies"] + meta["build-system"]["requires"]
    # The metadata allows a range of torch; the image installs the Dockerfile's pin first, so
    # the wheelhouse must hold that one (the newest in range may be another).
    pinned = re.search(r"^ARG TORCH_VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert pinned is not None, "the Dockerfile pins torch with ARG TORCH_VERSION"
    requirements.append(f"torch=={pinned.group(1)}")
    with tempfile.TemporaryDirectory(prefix="gswheels-") as folder:
        run_command(
            [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
             "--dest", folder, *requirements],
            timeout=600,
        )  # fmt: skip
        handler = functools.partial(QuietFileHandler, directory=folder)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)


@pytest.fixture
def image(docker_engine: DockerEngine, base_image: str, wheelhouse: str) -> str:
    result = docker_engine.run(
        "build", "--network=host", "--build-arg", f"PYTHON_IMAGE={base_image}",
        "--build-arg", f"WHEELHOUSE_URL={wheelhouse}", "--tag", IMAGE, str(REPO),
        timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    assert "Successfully tagged" in result.stdout or "naming to" in result.stdout + result.stderr
    return IMAGE


class Prometheus:
    """Debian's prometheus on 127.0.0.1, with the project's scrape jobs pointed at loopback."""

    def __init__(self, folder: Path, targets: dict[str, list[str]]) -> None:
        project = load_yaml(PROMETHEUS_FILE)
        jobs = []
        for job in project["scrape_configs"]:
            name = job["job_name"]
            assert name in targets, f"no loopback target for Prometheus job {name}"
            jobs.append({"job_name": name, "static_configs": [{"targets": targets[name]}]})
        config = {
            **project,
            "global": {**project.get("global", {}), "scrape_interval": SCRAPE_INTERVAL},
            "scrape_configs": jobs,
        }
        self.config = folder / "prometheus.json"
        # JSON is YAML: no YAML writer needed.
        self.config.write_text(json.dumps(config, indent=2))
        run_command(["promtool", "check", "config", str(self.config)], timeout=60)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["prometheus", f"--config.file={self.config}",
                 f"--storage.tsdb.path={folder / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + PROMETHEUS_READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"prometheus not ready in {PROMETHEUS_READY_TIMEOUT}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1s"})
        body = http_get_json(f"{self.url}/api/v1/query_range?{query}")
        assert body["status"] == "success", f"{expr}: {body}"
        return list(body["data"]["result"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# --- the compose file under test ----------------------------------------------------------


def host_network_compose(folder: Path) -> Path:
    """docker-compose.yml with every service on host networking.

    An override file cannot drop `ports` (compose v1 merges lists, and refuses published ports
    with host networking), so the services are copied with `ports`/`expose` left out and
    `network_mode: host` added; everything else, variables included, is the project's file.
    """
    compose = load_yaml(COMPOSE_FILE)
    for service in compose["services"].values():
        service.pop("ports", None)
        service.pop("expose", None)
        assert "networks" not in service, "the test expects services on the default network"
        service["network_mode"] = "host"
    compose = {key: value for key, value in compose.items() if not key.startswith("x-")}
    path = folder / "docker-compose.host-network.json"
    path.write_text(json.dumps(compose, indent=2))
    return path


def trained_parameters(output: str) -> tuple[float, float]:
    match = re.search(r"Trained w: (-?[\d.]+), b: (-?[\d.]+)", output)
    assert match, f"trainer printed no 'Trained w: ..., b: ...' line:\n{output[-3000:]}"
    return float(match.group(1)), float(match.group(2))


def send_one_bad_request(address: str) -> grpc.StatusCode:
    """An empty ComputeGradients: the server must refuse it (and count it by code)."""
    with grpc.insecure_channel(address) as channel:
        stub = gradserve_pb2_grpc.GradientServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ComputeGradients(gradserve_pb2.ComputeGradientsRequest(), timeout=10)
    code = refused.value.code()  # type: ignore[attr-defined]
    assert code not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE), code
    return code  # type: ignore[no-any-return]


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queries.append((panel["title"], target["expr"]))
    return queries


# --- static checks: no engine needed beyond the tools -------------------------------------


def test_compose_file_is_valid_for_compose_v1() -> None:
    env = {**os.environ, "GRADSERVE_IMAGE": IMAGE}
    run_command(["docker-compose", "-f", str(COMPOSE_FILE), "config", "--quiet"], env=env)
    compose = load_yaml(COMPOSE_FILE)
    assert "version" not in compose, "compose v2 warns about `version`; v1.27+ reads without it"
    server, trainer = compose["services"]["server"], compose["services"]["trainer"]
    assert trainer["depends_on"]["server"]["condition"] == "service_healthy"
    assert server["healthcheck"]["test"][:4] == [
        "CMD",
        "python",
        "-m",
        "gradserve.server.healthcheck",
    ]
    environment = server["environment"]
    grace = float(environment["GRADSERVE_SHUTDOWN_GRACE_SECONDS"].split(":-")[1][:-1])
    drain = float(environment["GRADSERVE_DRAIN_SECONDS"].split(":-")[1][:-1])
    assert float(server["stop_grace_period"].rstrip("s")) > drain + grace
    assert any("--linger" in str(arg) for arg in trainer["command"])
    # Each replica its own run, named after its container (the shell reads HOSTNAME inside it;
    # `$$` is compose's escape for a literal `$`), so `--scale trainer=3` gives three runs.
    assert trainer["command"][:2] == ["sh", "-c"]
    assert trainer["command"][2].startswith('exec python client/train.py --run "$$HOSTNAME" ')
    assert (
        "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in (compose["services"]["prometheus"]["volumes"])
    )


def test_prometheus_config_is_valid() -> None:
    run_command(["promtool", "check", "config", str(PROMETHEUS_FILE)], timeout=60)
    jobs = {job["job_name"] for job in load_yaml(PROMETHEUS_FILE)["scrape_configs"]}
    assert jobs == {"gradserve-server", "gradserve-trainer"}


def test_grafana_provisioning_follows_grafanas_schema() -> None:
    """Grafana's documented provisioning format (apiVersion 1) and dashboard JSON model."""
    compose = load_yaml(COMPOSE_FILE)["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in compose["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_mount = mounts["./deploy/grafana/dashboards"]

    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["access"] in ("proxy", "direct") and source["url"]
    assert source["url"] == "${PROMETHEUS_URL}" and "PROMETHEUS_URL" in compose["environment"]

    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "gradserve.yml")
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == dashboards_mount
    home = compose["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_mount}/{DASHBOARD_FILE.name}"

    dashboard = json.loads(DASHBOARD_FILE.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert "id" not in dashboard or dashboard["id"] is None, "a provisioned dashboard has no id"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] == "timeseries"
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}" and target["expr"]
    wanted = {
        "gradserve_train_loss", "gradserve_train_epoch_loss", "gradserve_train_steps_total",
        "grpc_server_handling_seconds_bucket", "grpc_server_handled_total",
        "gradserve_model_version", "gradserve_train_model_version",
    }  # fmt: skip
    exprs = " ".join(expr for _, expr in panel_queries(dashboard))
    assert all(name in exprs for name in wanted), wanted - set(re.findall(r"\w+", exprs))
    assert "histogram_quantile(0.5" in exprs and "histogram_quantile(0.99" in exprs

    # The run selector: the server's runs, All by default (".*" also matches the default run,
    # whose run label is empty), and every query of the server's training state filtered by it.
    source, variable = dashboard["templating"]["list"]
    assert variable["name"] == "run" and variable["type"] == "query"
    assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert variable["definition"] == "label_values(gradserve_model_version, run)"
    assert variable["query"]["query"] == variable["definition"]
    assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ".*"
    state = ("gradserve_model_version", "gradserve_last_loss", "gradserve_samples_total")
    state_queries = [e for _, e in panel_queries(dashboard) if any(n in e for n in state)]
    assert {n for n in state if any(n in e for e in state_queries)} == set(state)
    for expr in state_queries:
        assert re.search(r'\{run=~"\$run"\}', expr), expr

    # No uid of this compose file inside the dashboard: a Prometheus variable (provisioned, it
    # takes Grafana's default datasource, which is ours) that an import sets from __inputs.
    assert DATASOURCE_UID not in DASHBOARD_FILE.read_text()
    assert source["name"] == "datasource" and source["type"] == "datasource"
    assert source["query"] == "prometheus"
    (wanted_input,) = dashboard["__inputs"]
    assert wanted_input["type"] == "datasource" and wanted_input["pluginId"] == "prometheus"
    assert source["current"]["value"] == "${" + wanted_input["name"] + "}"
    assert {"prometheus", "timeseries"} <= {need["id"] for need in dashboard["__requires"]}
    # The errors panel draws only codes that occurred: every method's counters start at zero.
    (errors,) = [e for _, e in panel_queries(dashboard) if "grpc_server_handled_total" in e]
    assert errors.endswith(" > 0"), errors


# --- the end-to-end run -------------------------------------------------------------------


def test_compose_up_trains_and_prometheus_scrapes_it(
    docker_engine: DockerEngine, image: str, tmp_path: Path
) -> None:
    # The image itself: non-root, torch threads from the CPU budget.
    user = docker_engine.run("image", "inspect", "--format", "{{.Config.User}}", image)
    assert user.stdout.strip() not in ("", "root", "0")
    threads = docker_engine.run(
        "run", "--rm", "--network=host", "--cpus=1", image,
        "python", "-c", "import torch; print(torch.get_num_threads())", timeout=120,
    )  # fmt: skip
    assert threads.stdout.split()[-1] == "1", threads.stdout

    ports = {
        "GRADSERVE_PORT": free_port(),
        "GRADSERVE_METRICS_PORT": free_port(),
        "GRADSERVE_TRAIN_METRICS_PORT": free_port(),
    }
    env = {
        **docker_engine.env,
        **{name: str(port) for name, port in ports.items()},
        **TRAIN_ENV,
        "GRADSERVE_IMAGE": image,
        "GRADSERVE_SERVER_HOST": "127.0.0.1",
        "COMPOSE_PROJECT_NAME": PROJECT,
    }
    compose_file = host_network_compose(tmp_path)
    compose = ["docker-compose", "--project-directory", str(REPO), "-f", str(compose_file)]
    run_command([*compose, "config", "--quiet"], env=env)

    prometheus = Prometheus(
        tmp_path,
        {
            "gradserve-server": [f"127.0.0.1:{ports['GRADSERVE_METRICS_PORT']}"],
            "gradserve-trainer": [f"127.0.0.1:{ports['GRADSERVE_TRAIN_METRICS_PORT']}"],
        },
    )
    start = time.time()
    try:
        # up -d returns once the server is healthy (grpc.health.v1) and the trainer started.
        run_command([*compose, "up", "-d", "--no-build", "server", "trainer"], env=env,
                    timeout=UP_TIMEOUT)  # fmt: skip
        send_one_bad_request(f"127.0.0.1:{ports['GRADSERVE_PORT']}")

        trainer_id = run_command([*compose, "ps", "-q", "trainer"], env=env).stdout.strip()
        assert trainer_id, "docker-compose ps shows no trainer container"
        try:
            waited = docker_engine.run("wait", trainer_id, timeout=TRAINER_TIMEOUT)
        except pytest.fail.Exception:
            logs = run_command([*compose, "logs", "--no-color", "--tail=40"], env=env, check=False)
            pytest.fail(f"trainer still running after {TRAINER_TIMEOUT}s:\n{logs.stdout}")
        output = docker_engine.run("logs", trainer_id).stdout
        assert waited.stdout.strip() == "0", f"trainer exited {waited.stdout.strip()}:\n{output}"
        w, b = trained_parameters(output)
        # The seed data is y = 2x + 1 plus noise: its least-squares fit is w ~ 1.93, b ~ 1.03.
        assert math.isclose(w, 2.0, abs_tol=0.1) and math.isclose(b, 1.0, abs_tol=0.1), output
        end = time.time()

        # What Prometheus saw from the containers, over the run.
        loss = prometheus.query_range('gradserve_train_loss{job="gradserve-trainer"}', start, end)
        assert loss, f"Prometheus has no gradserve_train_loss:\n{prometheus.log_tail()}"
        handled = prometheus.query_range(
            'grpc_server_handled_total{job="gradserve-server"}', start, end
        )
        assert handled, f"Prometheus has no grpc_server_handled_total:\n{prometheus.log_tail()}"
        assert any(series["metric"]["grpc_code"] != "OK" for series in handled)

        # Every Grafana panel's query returns data, as Grafana would ask it (a range query).
        dashboard = json.loads(DASHBOARD_FILE.read_text())
        empty = []
        for title, expr in panel_queries(dashboard):
            # "$run" as Grafana sends the run selector's default, All.
            concrete = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$run", ".*")
            assert "$" not in concrete, f"{title}: unknown Grafana variable in {expr}"
            if prometheus.query_range(concrete, start, end):
                continue
            # A panel that shows only non-zero series ("> 0", the errors panel) is rightly
            # empty while no error rate is in the window; its query must still find the series.
            unfiltered = concrete.rstrip().removesuffix("> 0").rstrip()
            if unfiltered != concrete.rstrip() and prometheus.query_range(unfiltered, start, end):
                continue
            empty.append(f"{title}: {concrete}")
        assert not empty, "panels without data:\n" + "\n".join(empty)

        # SIGTERM stops the server gracefully, within stop_grace_period (else 137 = SIGKILL).
        server_id = run_command([*compose, "ps", "-q", "server"], env=env).stdout.strip()
        run_command([*compose, "stop", "server"], env=env, timeout=60)
        state = docker_engine.run("inspect", "--format", "{{.State.ExitCode}}", server_id)
        assert state.stdout.strip() == "0", docker_engine.run("logs", server_id).stderr[-2000:]
    finally:
        run_command([*compose, "down", "--volumes", "--remove-orphans", "--timeout", "20"],
                    env=env, timeout=120, check=False)  # fmt: skip
        prometheus.stop()
        shutil.rmtree(tmp_path / "tsdb", ignore_errors=True)
