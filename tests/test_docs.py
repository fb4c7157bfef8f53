"""The docs, run: every block of README.md, README.pypi.md and docs/*.md marked `test` runs
against a real server on a free loopback port (tests/doc_blocks.py says how blocks are marked),
every other block is marked illustrative with a reason, and the tables that restate the code
(the server's metrics, the error reasons) and the relative links are checked against it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from doc_blocks import DOCUMENTED_ADDRESS, ROOT, Block, all_blocks, blocks, chains, pages
from prometheus_client.metrics import MetricWrapperBase

from gradserve.client.gradient_client import GradientClient
from gradserve.server.metrics import ServerMetrics
from gradserve.server.tinker_api.metrics import TinkerMetrics

RUNNABLE = {"python", "bash", "sh", "json"}
# What a shell block sees of the checkout from its own scratch folder (files it writes stay
# there); `python` and the console scripts are this venv's.
CHECKOUT = ("client", "server", "src", "scripts", "proto", "examples", "docs", "bench", ".venv")
SHELL_SECONDS = 300


def run_python(block: Block, address: str, namespace: dict[str, Any]) -> None:
    code = block.body.replace(DOCUMENTED_ADDRESS, address)
    exec(compile(code, block.where, "exec"), namespace)


def shell_environment(workdir: Path) -> dict[str, str]:
    for name in CHECKOUT:
        if (ROOT / name).exists() and not (workdir / name).exists():
            (workdir / name).symlink_to(ROOT / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GRADSERVE_TRAIN_METRICS_PORT": "0",
        "GRADSERVE_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("GRADSERVE_SERVER", None)
    return env


@contextmanager
def server_in_background(block: Block, workdir: Path) -> Iterator[str]:
    """A `serves` block's server command, run until the block and its followers are done."""
    command, _ = block.split_server()
    env = {**shell_environment(workdir), "GRADSERVE_PORT": "0"}
    with (workdir / "server.log").open("w") as log:
        child = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=workdir, env=env, stdout=subprocess.PIPE,
            stderr=log, text=True,
        )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in child.stdout or ():
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        while True:
            line = lines.get(timeout=SHELL_SECONDS)
            assert line is not None, f"{block.where}: {(workdir / 'server.log').read_text()}"
            if line.startswith("listening on "):
                break
        yield line.removeprefix("listening on ").strip()
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=SHELL_SECONDS) == 0, (workdir / "server.log").read_text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=SHELL_SECONDS)
        reader.join(timeout=SHELL_SECONDS)  # the child is gone: its stdout is at its end
        if child.stdout is not None:
            child.stdout.close()


def run_shell(block: Block, address: str, workdir: Path) -> None:
    env = shell_environment(workdir)
    script = block.split_server()[1] if block.serves else block.body
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(DOCUMENTED_ADDRESS, address)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=SHELL_SECONDS, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"{block.where}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


def run_chain(chain: list[Block], make_server: Any, workdir: Path) -> None:
    """Run a test block (and the blocks that continue it) against a fresh server."""
    first = chain[0]
    settings: dict[str, Any] = dict(first.settings)
    if first.language == "json":
        spec = workdir / "spec.json"
        spec.write_text(first.body)
        settings["model_file"] = str(spec)
    server = make_server(**settings)
    if first.language == "json":
        with GradientClient(server.address) as client:
            assert client.model_info().model == json.loads(first.body)["model"], first.where
        return
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    address = server.address
    with ExitStack() as servers:
        for block in chain:
            if block.serves:
                address = servers.enter_context(server_in_background(block, workdir))
            if block.language == "python":
                run_python(block, address, namespace)
            else:
                run_shell(block, address, workdir)


@pytest.mark.parametrize("chain", chains(), ids=lambda chain: chain[0].where)
def test_a_documented_block_runs(
    chain: list[Block], make_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = [tool for block in chain for tool in block.needs if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{chain[0].where} runs {missing}, not installed here")
    monkeypatch.chdir(tmp_path)  # what a block writes stays in the test's folder
    run_chain(chain, make_server, tmp_path)


# -- the harness's own checks --------------------------------------------------------------


def test_every_block_is_run_or_marked_illustrative_with_a_reason() -> None:
    found = all_blocks()
    assert len(found) > 50, "the extractor lost blocks"
    unmarked = [block.where for block in found if block.marker is None]
    assert not unmarked, f"mark these <!-- test --> or <!-- illustrative: why -->: {unmarked}"
    unexplained = [b.where for b in found if b.marker == "illustrative" and not b.note]
    assert not unexplained, f"say why these are not run: {unexplained}"
    unrunnable = [b.where for b in found if b.marker == "test" and b.language not in RUNNABLE]
    assert not unrunnable, f"the harness runs only {sorted(RUNNABLE)}: {unrunnable}"
    assert sum(b.marker == "test" for b in found) >= 10


def test_the_harness_fails_a_broken_snippet(
    make_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- test -->\n```python\nfrom gradserve.client.gradient_client import GradientClient\n"
        'with GradientClient("127.0.0.1:50051") as client:\n'
        "    client.apply_update(learning_rate=0.01)\n```\n"
        "<!-- test -->\n```bash\npython client/train.py --epochs 1 --no-such-flag\n```\n"
    )
    monkeypatch.setattr(Block, "where", property(lambda block: f"page.md:{block.line}"))
    monkeypatch.chdir(tmp_path)
    python, shell = blocks(page)
    # A real server refuses it: nothing was accumulated.
    with pytest.raises(Exception, match="nothing"):
        run_chain([python], make_server, tmp_path)
    with pytest.raises(AssertionError, match=r"page\.md:8: exit 2"):
        run_chain([shell], make_server, tmp_path)


# -- tables that restate the code ----------------------------------------------------------


def section(page: Path, heading: str) -> str:
    text = page.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_the_readme_lists_every_server_metric_with_its_labels() -> None:
    metrics = ServerMetrics()
    # The Tinker front's, declared on the same registry when --tinker-port is set.
    tinker = TinkerMetrics(metrics.registry, ())
    declared = {}
    for metric in [*vars(metrics).values(), *vars(tinker).values()]:
        if isinstance(metric, MetricWrapperBase):
            # prometheus_client keeps a counter's name without _total; it exports it with it.
            suffix = "_total" if metric._type == "counter" else ""
            declared[metric._name + suffix] = set(metric._labelnames)
    table = section(ROOT / "README.md", "## Metrics").split("\n\nTrainer")[0]
    documented: dict[str, set[str] | None] = {}
    for row in table.splitlines():
        cells = row.split("|")
        if len(cells) < 3:
            continue
        for name, labels in re.findall(r"`(\w+)(?:\{([^}]*)\})?`", cells[1]):
            same_as_above = labels == "..."
            documented[name] = None if same_as_above else set(filter(None, labels.split(",")))
    assert set(documented) == set(declared), (set(declared) - set(documented), set(documented) - set(declared))  # fmt: skip
    for name, labels in documented.items():
        assert labels is None or labels == declared[name], (name, labels, declared[name])


def test_the_error_reason_table_lists_every_reason_the_code_gives() -> None:
    given = set()
    for folder in ("server", "src/gradserve", "client"):
        for source in (ROOT / folder).rglob("*.py"):
            given |= set(re.findall(r'\breason\s*[:=][^"\n]*"([A-Z][A-Z_]+)"', source.read_text()))
    table = section(ROOT / "docs" / "protocol.md", "## Errors")
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, flags=re.MULTILINE))
    assert {"CHECKPOINT_UNUSABLE", "HANDLE_STALE", "VERSION_CONFLICT"} <= given
    assert given <= documented, sorted(given - documented)


def test_relative_links_point_at_files_that_exist() -> None:
    broken = []
    for page in pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_grpcurl_call_sends_the_json_its_python_twin_runs() -> None:
    """grpcurl is not installed here: its block is illustrative, and the Python block after it
    (run above) sends the same JSON; this keeps the two the same request."""
    found = blocks(ROOT / "docs" / "protocol.md")
    (grpcurl,) = [b for b in found if b.body.startswith("grpcurl") and "-d '" in b.body]
    twin = found[found.index(grpcurl) + 1]
    assert twin.marker == "test" and twin.language == "python"
    sent = grpcurl.body.split("-d '", 1)[1].split("'", 1)[0]
    run = twin.body.split('request = """', 1)[1].split('"""', 1)[0]
    assert json.loads(sent) == json.loads(run)
