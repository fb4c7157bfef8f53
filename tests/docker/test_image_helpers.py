"""The image's two helpers, without Docker: the CPU-budget wrapper and the grpc.health.v1 probe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gradserve.server import cpu_budget, healthcheck
from gradserve.server.app import GradientServer


def write_cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_quota_limits_threads(tmp_path: Path) -> None:
    root = write_cgroup(tmp_path, {"cpu.max": "150000 100000\n"})
    assert cpu_budget.cgroup_cpu_limit(root) == 1.5
    assert cpu_budget.torch_threads(root) == 1


def test_cgroup_v1_quota_limits_threads(tmp_path: Path) -> None:
    root = write_cgroup(
        tmp_path, {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    )
    assert cpu_budget.cgroup_cpu_limit(root) == 1.0


def test_no_quota_means_the_cores_this_process_may_use(tmp_path: Path) -> None:
    assert cpu_budget.cgroup_cpu_limit(write_cgroup(tmp_path, {"cpu.max": "max 100000\n"})) is None
    assert cpu_budget.cgroup_cpu_limit(tmp_path / "absent") is None
    assert cpu_budget.torch_threads(tmp_path / "absent") == cpu_budget.available_cpus()


def test_a_tiny_quota_still_gets_one_thread(tmp_path: Path) -> None:
    assert cpu_budget.torch_threads(write_cgroup(tmp_path, {"cpu.max": "10000 100000"})) == 1


def test_wrapper_sets_thread_variables_and_execs_the_command() -> None:
    env = {k: v for k, v in os.environ.items() if k not in cpu_budget.THREAD_VARIABLES}
    env["OMP_NUM_THREADS"] = "7"  # set by the user: kept
    script = (
        "import os; print(os.environ['GRADSERVE_TORCH_THREADS'], os.environ['OMP_NUM_THREADS'])"
    )
    result = subprocess.run(
        [sys.executable, "-m", "gradserve.server.cpu_budget", sys.executable, "-c", script],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.split() == [str(cpu_budget.torch_threads()), "7"]


def test_healthcheck_reports_serving(server: GradientServer) -> None:
    assert healthcheck.check(server.address, timeout=5) == "SERVING"
    assert healthcheck.main(["--address", server.address, "--timeout", "5"]) == 0


def test_healthcheck_fails_when_shutting_down_or_unreachable(server: GradientServer) -> None:
    address = server.address
    server.health.enter_graceful_shutdown()
    assert healthcheck.main(["--address", address, "--timeout", "5"]) == 1
    server.stop(0)
    assert healthcheck.main(["--address", address, "--timeout", "1"]) == 1
