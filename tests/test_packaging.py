"""What the wheel ships beyond the code: the .proto (with `python -m gradserve.proto_path` to
find it), the license, and the console scripts.

Builds the wheel from this checkout (no build isolation: the venv's setuptools, offline) and
runs the proto_path module from the unpacked wheel, not from the checkout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import resources
from pathlib import Path

import pytest
from grpc_tools import protoc  # type: ignore[import-untyped]

from gradserve.proto_path import include_directory

ROOT = Path(__file__).resolve().parent.parent
PROTO = "gradserve/v1/gradserve.proto"


# What the build reads; copied, because setuptools writes build/ and *.egg-info beside them.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "src", "server", "client", "proto")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tree / name)
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--disable-pip-version-check", "-w", str(out), str(tree)]  # fmt: skip
    run = subprocess.run(build, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    (built,) = out.glob("gradserve-*.whl")
    return built


def _dist_info(archive: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in archive.namelist() if n.endswith(f".dist-info/{name}")]
    return archive.read(path).decode()


def test_the_wheel_carries_the_proto_license_and_healthcheck(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert archive.read(f"gradserve/proto/{PROTO}") == (ROOT / "proto" / PROTO).read_bytes()
        # The release snapshot is the repository's, not the package's.
        assert not [n for n in names if n.endswith(".binpb")]
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert "Apache License" in archive.read(license_file).decode()
        metadata = Parser().parsestr(_dist_info(archive, "METADATA"))
        entry_points = _dist_info(archive, "entry_points.txt")
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "gradserve-healthcheck = gradserve.server.healthcheck:main" in entry_points


def test_proto_path_from_the_wheel_is_an_include_root_for_protoc(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # -S: without site-packages, so the checkout's editable install cannot answer instead.
    run = subprocess.run(
        [sys.executable, "-S", "-m", "gradserve.proto_path"], capture_output=True, text=True,
        timeout=60, check=True, env={"PYTHONPATH": str(site)},
    )  # fmt: skip
    include = Path(run.stdout.strip())
    assert include == site / "gradserve" / "proto"

    well_known = resources.files("grpc_tools") / "_proto"
    out = tmp_path / "generated"
    out.mkdir()
    assert protoc.main(["protoc", "-I", str(include), f"-I{well_known}",
                        f"--python_out={out}", PROTO]) == 0  # fmt: skip
    assert (out / "gradserve" / "v1" / "gradserve_pb2.py").is_file()


def test_proto_path_in_a_checkout_is_the_repository_proto() -> None:
    assert include_directory() == ROOT / "proto"


def test_the_unpacked_wheel_runs_the_server_and_the_trainer(wheel: Path, tmp_path: Path) -> None:
    """The wheel alone, not the checkout: -S skips site-packages' .pth files (the editable
    install's finder), and PYTHONPATH puts the unpacked wheel before the dependencies."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    dependencies = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PYTHONPATH": ":".join([str(site), *dependencies])}

    def module(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-S", "-m", *args], capture_output=True, text=True,
                              timeout=300, check=False, env=env, cwd=tmp_path)  # fmt: skip

    where = module("gradserve.client.train", "--epochs", "2", "--json")
    assert where.returncode == 0, where.stderr
    assert json.loads(where.stdout.strip().splitlines()[-1])["epochs"] == 2
    served = module("gradserve.server.serve", "--help")
    assert served.returncode == 0 and "usage: gradserve-server" in served.stdout
    located = module("gradserve.server.healthcheck", "--help")
    assert located.returncode == 0, located.stderr
    imported = subprocess.run(
        [sys.executable, "-S", "-c", "import gradserve.server.app as a; print(a.__file__)"],
        capture_output=True, text=True, timeout=60, check=True, env=env,
    )  # fmt: skip
    assert imported.stdout.strip().startswith(str(site))
