"""docs/runs.md's worked example, walked from the shell only: its shell blocks, command by
command, as a user types them (`gradserve serve` on port 0 instead of 50051), then checked
with `gradserve` itself: the fork is the checkpoint, the load answers the digest, Bob sees only
his runs, his export is his fork's parameters."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "runs.md"
SECTION = "## Worked example: two students on one server"
TIMEOUT = 180.0
BIN = Path(sys.executable).parent


def shell_blocks() -> list[list[str]]:
    """The ```sh blocks of the section, each as its commands (continuations joined)."""
    text = DOC.read_text()
    section = text[text.index(SECTION) :]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    return [block.replace("\\\n", " ").strip().splitlines() for block in blocks]


def expected_exit(command: str) -> int:
    found = re.search(r"# exit (\d+)", command)
    return int(found.group(1)) if found else 0


class Shell:
    """Commands run by bash in one folder, with the variables that `export` lines set."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        environment = {k: v for k, v in os.environ.items() if not k.startswith("GRADSERVE_")}
        # The console scripts of this venv first; /metrics off (a fixed port may be taken).
        environment["PATH"] = f"{BIN}{os.pathsep}{environment.get('PATH', '')}"
        environment["GRADSERVE_TRAIN_METRICS_PORT"] = "0"
        self.env = environment
        self.outputs: dict[str, list[str]] = {}

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def walk(self, command: str) -> None:
        if command.startswith("export "):
            for assignment in shlex.split(command)[1:]:
                name, _, value = assignment.partition("=")
                self.env[name] = value
            return
        done = self.run(command)
        assert done.returncode == expected_exit(command), (command, done.stderr)
        if expected_exit(command):
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        said = self.outputs.setdefault(command.split("#", maxsplit=1)[0].strip(), [])
        said.append(done.stdout + done.stderr)

    def json(self, command: str) -> object:
        done = self.run(command + " --json")
        assert done.returncode == 0, (command, done.stderr)
        return json.loads(done.stdout)


def start_server(command: str, folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen(
        [*shlex.split(command), "--port", "0", "--metrics-port", "0"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        line = lines.get(timeout=TIMEOUT)
        assert line is not None, "the server exited"
        if line.startswith("listening on "):
            return child, line.removeprefix("listening on ").strip()


@pytest.mark.slow
def test_the_worked_example_runs_from_the_shell(tmp_path: Path) -> None:
    server_block, *blocks = shell_blocks()
    assert len(blocks) == 3
    shell = Shell(tmp_path)
    child = None
    try:
        for command in server_block:
            if command.startswith("gradserve serve "):
                child, address = start_server(command, tmp_path, shell.env)
            else:
                shell.walk(command)
        assert child is not None
        for block in blocks:
            for command in block:
                shell.walk(command.replace("SERVER=127.0.0.1:50051", f"SERVER={address}"))

        alice = " --token-file alice.token"
        (tmp_path / "alice.token").write_text("alice-secret-token\n")
        saved = shell.json("gradserve checkpoints list alice-1" + alice)
        assert [c["name"] for c in saved] == ["epoch-5"]  # type: ignore[index]
        digest = saved[0]["digest"]  # type: ignore[index]
        (fork,) = shell.outputs["gradserve digest alice-2"]
        assert fork.split()[0] == digest
        trained, loaded = shell.outputs["gradserve digest alice-1"]
        assert trained.split()[0] != digest
        assert loaded.split()[0] == digest
        (load,) = shell.outputs["gradserve checkpoints load alice-1 epoch-5 --with-optimizer-state"]
        assert f"(digest {digest[:16]})" in load

        bob = " --token-file bob.token"
        listing = shell.outputs["gradserve runs list" + bob][0].splitlines()
        assert [line.split()[0] for line in listing[1:]] == ["(default)", "bob-1", "bob-2"]
        (refused,) = shell.outputs["gradserve runs show alice-1" + bob]
        assert "NOT_FOUND" in refused
        exported = load_file(str(tmp_path / "bob-2" / "model.safetensors"))
        assert sorted(exported) == ["0.bias", "0.weight", "2.bias", "2.weight"]
        runs = shell.json("gradserve runs list" + bob)
        assert [run["run"] for run in runs] == ["", "bob-1"]  # type: ignore[union-attr]
        bob_1 = shell.json("gradserve runs show bob-1" + bob)
        assert (bob_1["loss"], bob_1["model_spec"]) == ("mse", "mlp:1-16-1:tanh")  # type: ignore[index]
    finally:
        if child is not None:
            child.terminate()
            child.wait(timeout=TIMEOUT)
            if child.stdout is not None:
                child.stdout.close()
