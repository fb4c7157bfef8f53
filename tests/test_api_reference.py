"""The API reference: docs/reference/*.md show modules and classes by `::: path` and
mkdocstrings renders them from docstrings (scripts/check.sh builds the site with --strict). An
undocumented member is left out silently, so this checks that every public class, function and
method shown, inherited methods of the package's own classes included, has a docstring.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

griffe = pytest.importorskip("griffe", reason="the dev extra's mkdocstrings[python] brings griffe")

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


def shown() -> list[str]:
    paths = []
    for page in sorted(REFERENCE.glob("*.md")):
        paths += re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.MULTILINE)
    return paths


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """griffe over the package laid out as it installs (server/ and client/ inside gradserve/),
    as scripts/check.sh gives mkdocs: griffe cannot follow setuptools' package-dir mapping."""
    tree = tmp_path_factory.mktemp("api")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "src" / "gradserve", tree / "gradserve", ignore=ignore)
    shutil.copytree(ROOT / "server", tree / "gradserve" / "server", ignore=ignore)
    shutil.copytree(ROOT / "client", tree / "gradserve" / "client", ignore=ignore)
    return griffe.GriffeLoader(search_paths=[str(tree)])


def undocumented(obj: Any) -> list[str]:
    missing = [] if obj.docstring else [obj.path]
    if obj.is_function:
        return missing
    members = obj.all_members if obj.is_class else obj.members
    for name, member in members.items():
        if name.startswith("_") or (member.is_alias and not obj.is_class):
            continue  # private, or a module's import of another module's name
        target = member.final_target if member.is_alias else member
        if target.is_class or target.is_function:
            missing += undocumented(target)
    return missing


def test_the_reference_shows_the_public_api() -> None:
    assert {
        "gradserve.client.gradient_client.GradientClient", "gradserve.types", "gradserve.errors",
        "gradserve.codec", "gradserve.server.app",
    } <= set(shown())  # fmt: skip


@pytest.mark.parametrize("path", shown())
def test_every_public_member_shown_has_a_docstring(loader: Any, path: str) -> None:
    missing = sorted(set(undocumented(loader.load(path))))
    assert not missing, f"{path}: no docstring on {missing}"
