"""Fixtures for the docker tests: a private Docker engine (docker_engine.py) for the session, and
the stand-in for python:3.11-slim, built with debootstrap and cached between runs.

Without root or the tools (scripts/install-docker-test-deps.sh), the docker tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_engine import (
    DockerEngine,
    build_rootfs_tarball,
    docker_cli,
    missing_requirements,
    stop_daemon,
    unmount_below,
    wait_until_ready,
)

BASE_IMAGE = "gradserve-test/python:3.11-slim-bookworm"
# Survives between runs on a machine that keeps /var/cache; GRADSERVE_DOCKER_CACHE moves it.
CACHE_DIR = Path(os.environ.get("GRADSERVE_DOCKER_CACHE", "/var/cache/gradserve"))
BASE_TARBALL = "debian-bookworm-minbase-python3.tar"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = missing_requirements()
    if reason is None:
        return
    for item in items:
        if "docker" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    # A short path: a unix socket's path must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="gsdocker-"))
    engine = DockerEngine(root / "docker.sock", 0, root / "dockerd.log", docker_cli() or "docker")
    command = [
        "dockerd",
        f"--host=unix://{engine.socket}",
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'dockerd.pid'}",
        # No docker0 bridge, no NAT, no iptables: host networking only.
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
    ]
    with engine.log.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    engine.pid = process.pid
    try:
        wait_until_ready(engine, process)
        yield engine
    finally:
        stop_daemon(engine, process)
        unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def base_image(docker_engine: DockerEngine) -> str:
    """python:3.11-slim stand-in: Debian bookworm's python3 (3.11) with venv, imported locally."""
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        cache: Path | None = CACHE_DIR
    except OSError:
        cache = None
    with tempfile.TemporaryDirectory(prefix="gsbase-") as work:
        tarball = (cache or Path(work)) / BASE_TARBALL
        cached = tarball.exists()
        if not cached:
            build_rootfs_tarball(tarball)
        command = ("import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
                   str(tarball), BASE_IMAGE)  # fmt: skip
        if docker_engine.run(*command, timeout=300, check=not cached).returncode != 0:
            # A damaged cache (a disk filled up mid-write): build it again, once.
            tarball.unlink()
            build_rootfs_tarball(tarball)
            docker_engine.run(*command, timeout=300)
    return BASE_IMAGE
