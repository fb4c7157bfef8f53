"""deploy/k8s/: every document valid against the Kubernetes schemas (kubernetes-validate's
bundled ones, strict: unknown fields fail; offline), and the numbers that must agree do: the
drain against the probes and the termination grace, the checkpoint volume against the server's
folder, the proxy's upstreams against the per-replica Services; nginx accepts the proxy's config.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
NGINX = Path("/usr/sbin/nginx")


def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def test_every_document_follows_the_kubernetes_schema() -> None:
    docs = documents()
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Service", "ConfigMap", "Deployment"} <= kinds
    version = kubernetes_validate.latest_version()
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_a_misspelled_field() -> None:
    broken = copy.deepcopy(one("StatefulSet", "gradserve"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["resourcs"] = container.pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_the_statefulset_drains_before_it_stops_and_keeps_its_checkpoints() -> None:
    statefulset = one("StatefulSet", "gradserve")
    pod = statefulset["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    env = env_of(server)
    drain = float(env["GRADSERVE_DRAIN_SECONDS"])
    grace = float(env["GRADSERVE_SHUTDOWN_GRACE_SECONDS"])
    # Out of every Service before it stops serving: readiness fails within the drain.
    readiness = server["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < drain
    # Drain, then in-flight calls, then the final checkpoint (at least 10 s) before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= drain + grace + 10
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    assert ports["grpc"] == int(env["GRADSERVE_PORT"]) and env["GRADSERVE_HOST"] == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": ports["grpc"]}, probe
    assert {"cpu", "memory"} <= set(server["resources"]["limits"])
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["GRADSERVE_CHECKPOINT_DIR"]
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert one("Service", statefulset["spec"]["serviceName"])["spec"]["clusterIP"] == "None"


def test_the_proxy_places_runs_on_the_per_replica_services() -> None:
    replicas = one("StatefulSet", "gradserve")["spec"]["replicas"]
    for ordinal in range(replicas):
        service = one("Service", f"gradserve-{ordinal}")
        assert service["spec"]["selector"] == {
            "statefulset.kubernetes.io/pod-name": f"gradserve-{ordinal}"
        }
    config = one("ConfigMap", "gradserve-proxy")["data"]["nginx.conf"]
    upstreams = re.findall(r"server (gradserve-\d+):50051;", config)
    assert sorted(upstreams) == [f"gradserve-{i}" for i in range(replicas)]
    assert "map $http_gradserve_run $backend" in config
    deployment = one("Deployment", "gradserve-proxy")
    pod = deployment["spec"]["template"]["spec"]
    (nginx,) = pod["containers"]
    assert {"cpu", "memory"} <= set(nginx["resources"]["limits"])
    assert pod["volumes"][0]["configMap"]["name"] == "gradserve-proxy"
    clients = one("Service", "gradserve")["spec"]
    assert clients["selector"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.skipif(
    not NGINX.exists(), reason="nginx is not installed (scripts/install-proxy-deps.sh)"
)
def test_nginx_accepts_the_proxy_config(tmp_path: Path) -> None:
    config = one("ConfigMap", "gradserve-proxy")["data"]["nginx.conf"]
    # The cluster's names and paths made local: the upstreams must resolve for `nginx -t`.
    local = re.sub(r"server gradserve-\d+:", "server 127.0.0.1:", config)
    local = local.replace("/tmp/", f"{tmp_path}/")
    (tmp_path / "nginx.conf").write_text(local)
    (tmp_path / "logs").mkdir()
    assert shutil.which(str(NGINX))
    checked = subprocess.run(
        [str(NGINX), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
