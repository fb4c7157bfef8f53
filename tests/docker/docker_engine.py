"""A private Docker engine for the docker tests: its own dockerd, socket and data root, stopped by
pid afterwards, with no default bridge and no iptables rules (containers use host networking).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRED_TOOLS = ("dockerd", "docker-compose", "debootstrap", "prometheus", "promtool")
INSTALL_HINT = "install them with scripts/install-docker-test-deps.sh"
DAEMON_START_TIMEOUT = 60.0
DAEMON_STOP_TIMEOUT = 30.0
DEBOOTSTRAP_TIMEOUT = 600


def missing_requirements() -> str | None:
    """Why the docker tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the docker tests start their own dockerd, which needs root"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not docker_cli():
        missing.append("docker")
    if missing:
        return f"not installed: {', '.join(missing)} ({INSTALL_HINT})"
    return None


def docker_cli() -> str | None:
    # Debian's client matches Debian's dockerd; another one on PATH still speaks its API.
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")


@dataclass
class DockerEngine:
    socket: Path
    pid: int
    log: Path
    cli: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`docker ARGS` against this engine; a failure or time-out names the command."""
        return run_command([self.cli, *args], env=self.env, timeout=timeout, check=check)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def run_command(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
    cwd: Path | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            command, env=env, cwd=cwd, input=input_text, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{' '.join(command)}: no result within {timeout:.0f}s\n{error.stdout or ''}")
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        pytest.fail(f"{' '.join(command)}: exit {result.returncode}\n{output}")
    return result


def wait_until_ready(engine: DockerEngine, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dockerd exited with {process.returncode}:\n{engine.log_tail()}")
        if engine.socket.exists():
            probe = subprocess.run(
                [engine.cli, "version", "--format", "{{.Server.Version}}"],
                env=engine.env, capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
            if probe.returncode == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"dockerd not ready within {DAEMON_START_TIMEOUT:.0f}s:\n{engine.log_tail()}")


def unmount_below(root: Path) -> None:
    """dockerd leaves mounts (exec-root/netns/default) under its roots: lazily unmount them."""
    prefix = f"{root}/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30, check=False)


def stop_daemon(engine: DockerEngine, process: subprocess.Popen[bytes]) -> None:
    """Remove every container, then SIGTERM dockerd by pid; its process group if it hangs."""
    if process.poll() is not None:
        return
    try:
        ids = subprocess.run(
            [engine.cli, "ps", "-aq"], env=engine.env, capture_output=True, text=True,
            timeout=30, check=False,
        ).stdout.split()  # fmt: skip
        if ids:
            subprocess.run(
                [engine.cli, "rm", "-f", "-v", *ids], env=engine.env, capture_output=True,
                timeout=60, check=False,
            )  # fmt: skip
    except subprocess.TimeoutExpired:
        pass  # the daemon is stopped below all the same
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(DAEMON_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # dockerd and the containerd it started share the group it was started in.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def build_rootfs_tarball(destination: Path) -> None:
    """debootstrap a minimal bookworm with python3 + venv, packed as a tarball for docker import."""
    with tempfile.TemporaryDirectory(prefix="gsrootfs-") as work:
        rootfs = Path(work) / "rootfs"
        run_command(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             "bookworm", str(rootfs)],
            timeout=DEBOOTSTRAP_TIMEOUT,
        )  # fmt: skip
        partial = destination.with_suffix(".partial")
        run_command(["tar", "-C", str(rootfs), "-cf", str(partial), "."], timeout=300)
        partial.replace(destination)
