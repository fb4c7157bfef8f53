"""examples/custom_model/README.md's commands, run as written from that folder (ports aside):
the console scripts import the factory from the current folder, as `python -m` would."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradserve.errors import InvalidArgumentError
from gradserve.server.models.specs import build

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "custom_model"
SCRIPTS = Path(sys.executable).parent


def readme_commands() -> list[list[str]]:
    text = (EXAMPLE / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.strip()]


def environment() -> dict[str, str]:
    # The console scripts of this venv, first on PATH; no GRADSERVE_* settings, no PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADSERVE_")}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{SCRIPTS}{os.pathsep}{env.get('PATH', '')}"
    return env


def with_free_ports(command: list[str], address: str = "") -> list[str]:
    replaced = ["0" if word == "50051" else word for word in command]
    replaced = [address if word == "127.0.0.1:50051" else word for word in replaced]
    return [*replaced, "--metrics-port", "0"]


def train(command: list[str]) -> dict[str, object]:
    finished = subprocess.run(
        [*command, "--json"],
        cwd=EXAMPLE,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout)


def test_readme_commands_train_the_factory_model_reproducibly() -> None:
    pytest.importorskip("sklearn")  # --dataset digits: the `data` extra
    embedded, serve, remote = readme_commands()
    assert [embedded[0], serve[0], remote[0]] == [
        "gradserve-train",
        "gradserve-server",
        "gradserve-train",
    ]
    first, second = train(with_free_ports(embedded)), train(with_free_ports(embedded))
    assert first["model"] == "digitsnet:dropout=0.2"
    # The same --seed: the same step seeds, dropout masks, and so bitwise the same run.
    assert first["parameters"] == second["parameters"]
    assert first["epoch_losses"] == second["epoch_losses"]
    server = subprocess.Popen(
        with_free_ports(serve),
        cwd=EXAMPLE,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        address = ""
        for line in server.stdout:
            if line.startswith("listening on "):
                address = line.removeprefix("listening on ").strip()
                break
        assert address, server.stderr.read() if server.stderr else ""
        summary = train(with_free_ports(remote, address))
    finally:
        server.kill()
        server.wait(timeout=60)
        for stream in (server.stdout, server.stderr):
            if stream is not None:
                stream.close()
    assert summary["model"] == "digitsnet"
    assert summary["steps"] == first["steps"]
    assert float(summary["accuracy"]) > 0.8  # type: ignore[arg-type]


def test_a_factory_names_its_default_loss_and_loss_still_overrides_it() -> None:
    factories = ("c=model_factories:classifier",)
    chosen = build("c", factories=factories)
    assert (chosen.loss.name, chosen.target.dtype, chosen.num_classes) == (
        "cross_entropy",
        torch.int64,
        4,
    )
    assert build("c", "mse", factories=factories).loss.name == "mse"
    with pytest.raises(InvalidArgumentError, match="loss: unknown loss 'hinge'"):
        build("c:loss=hinge", factories=factories)
