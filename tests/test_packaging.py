"""What the wheel ships beyond the code: the .proto (with `python -m gradserve.proto_path` to
find it), the license, the console scripts, and metadata a package index shows (URLs,
classifiers, authors, a readme whose links work, torch as a range); what the sdist ships (the
docs the readmes link to); and the one torch the project's own installs put in first.

Builds the wheel and the sdist from a copy of this checkout (no build isolation: the venv's
setuptools, offline) and runs the proto_path module from the unpacked wheel, not the checkout.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from importlib import resources
from pathlib import Path

import pytest
import tomllib
from grpc_tools import protoc  # type: ignore[import-untyped]
from packaging.requirements import Requirement

from gradserve.proto_path import include_directory

ROOT = Path(__file__).resolve().parent.parent
PROTO = "gradserve/v1/gradserve.proto"


# What the build reads; copied, because setuptools writes build/ and *.egg-info beside them.
SOURCES = (
    "pyproject.toml", "README.md", "README.pypi.md", "MANIFEST.in", "LICENSE", "src", "server",
    "client", "proto", "docs", "examples", "deploy", "bench",
)  # fmt: skip
REPOSITORY = "https://github.com/gradserve/gradserve"
# The torch the project's installs put in first, and where each says so.
TESTED_TORCH = "2.13.0"


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", "*.egg-info")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=ignore)
        else:
            shutil.copy(source, tree / name)
    return tree


@pytest.fixture(scope="module")
def wheel(source_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = source_tree
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


@pytest.fixture(scope="module")
def sdist_names(source_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    out = tmp_path_factory.mktemp("sdist")
    build = [sys.executable, "-c",
             "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))", str(out)]  # fmt: skip
    run = subprocess.run(build, capture_output=True, text=True, timeout=300, check=False,
                         cwd=source_tree)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    (built,) = out.glob("gradserve-*.tar.gz")
    with tarfile.open(built) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def relative_links(markdown: Path) -> set[str]:
    """The files a Markdown page links to or shows by relative path, anchors dropped."""
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown.read_text())
    return {t.split("#")[0] for t in targets if not re.match(r"[a-z]+:|#", t) and t.split("#")[0]}


def test_the_metadata_has_urls_classifiers_authors_and_a_torch_range(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        metadata = Parser().parsestr(_dist_info(archive, "METADATA"))
    urls = dict(value.split(", ", 1) for value in metadata.get_all("Project-URL"))
    assert urls["Source"] == REPOSITORY and urls["Issues"] == f"{REPOSITORY}/issues"
    assert {"Homepage", "Documentation"} <= set(urls)
    classifiers = metadata.get_all("Classifier")
    assert "Programming Language :: Python :: 3" in classifiers
    assert "Typing :: Typed" in classifiers
    assert metadata["Author"] or metadata["Author-email"]
    (torch,) = [Requirement(r) for r in metadata.get_all("Requires-Dist") if r.startswith("torch")]
    # A range that admits the tested torch and others: installing gradserve keeps a user's torch.
    assert TESTED_TORCH in torch.specifier and "2.7.1" in torch.specifier
    assert not any(spec.operator in ("==", "===") for spec in torch.specifier)


def test_the_package_index_readme_links_only_absolute_urls_that_exist_here(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        metadata = Parser().parsestr(_dist_info(archive, "METADATA"))
    readme = metadata.get_payload()
    assert readme.strip() == (ROOT / "README.pypi.md").read_text().strip()
    assert metadata["Description-Content-Type"] == "text/markdown"
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links and not re.search(r"<img|!\[", readme)
    for link in links:
        assert link.startswith("https://"), link
        # A page of this repository: the file is here (the index shows main's).
        if link.startswith(f"{REPOSITORY}/blob/main/"):
            assert (ROOT / link.removeprefix(f"{REPOSITORY}/blob/main/")).is_file(), link


def test_the_readme_relative_links_resolve_and_ship_in_the_sdist(sdist_names: set[str]) -> None:
    linked = relative_links(ROOT / "README.md")
    assert "docs/protocol.md" in linked and "docs/graph-linear.png" in linked
    for target in linked:
        assert (ROOT / target).exists(), target
        if (ROOT / target).is_file():
            assert target in sdist_names, target
        else:
            assert any(name.startswith(target.rstrip("/") + "/") for name in sdist_names), target
    assert {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")} <= sdist_names
    assert "README.pypi.md" in sdist_names and "pyproject.toml" in sdist_names


def test_the_projects_installs_put_the_tested_torch_in_first() -> None:
    """pyproject.toml's range alone would let pip take the newest torch (a CUDA build of
    several GB from PyPI): setup-venv.sh (scripts/test.sh, CI) and the Dockerfile install the
    tested one explicitly before anything that depends on torch."""
    setup = (ROOT / "scripts" / "setup-venv.sh").read_text()
    assert f"TORCH_VERSION={TESTED_TORCH}\n" in setup
    first_torch = setup.index('"torch==${TORCH_VERSION}"')
    assert first_torch < setup.index('-e "$spec"')
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={TESTED_TORCH}\n" in dockerfile
    assert dockerfile.index('"torch==${TORCH_VERSION}"') < dockerfile.index(
        "-r /tmp/requirements.txt"
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch,) = [Requirement(r) for r in project["dependencies"] if r.startswith("torch")]
    assert TESTED_TORCH in torch.specifier
