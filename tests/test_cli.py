"""`gradserve` as a user runs it (the console script in a process of its own) against a real
server: every command's answer for people and as JSON, its exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradserve.client.gradient_client import GradientClient
from gradserve.server.app import GradientServer

TIMEOUT = 120.0


def gradserve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("gradserve")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRADSERVE_")}
    return subprocess.run(
        [str(script), *args],
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    done = gradserve(*args, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


@pytest.fixture
def served(make_server, tmp_path: Path) -> GradientServer:
    return make_server(checkpoint_dir=str(tmp_path / "checkpoints"))


def test_runs_and_checkpoints_from_the_shell(served: GradientServer) -> None:
    env = {"GRADSERVE_SERVER": served.address}
    created = json.loads(
        ok(
            "runs",
            "create",
            "r1",
            "--model",
            "mlp:1-4-1",
            "--loss",
            "mse",
            "--seed",
            "3",
            "--json",
            env=env,
        )
    )
    assert created == {
        "run": "r1",
        "model": "mlp:1-4-1:relu",
        "loss": "mse",
        "optimizer": "sgd",
        "model_version": 0,
    }
    table = ok("runs", "list", env=env).splitlines()
    assert table[0].split() == ["RUN", "OWNER", "MODEL", "OPTIMIZER", "VERSION", "LOADED", "BYTES"]
    assert [line.split()[0] for line in table[1:]] == ["(default)", "r1"]
    # Aligned: every column starts where its heading does.
    assert table[2].index("mlp:1-4-1:relu") == table[0].index("MODEL")
    listed = json.loads(ok("runs", "list", "--json", "--server", served.address))
    assert [run["run"] for run in listed] == ["", "r1"]
    shown = json.loads(ok("runs", "show", "r1", "--json", env=env))
    assert (shown["model_spec"], shown["parameter_bytes"], shown["loss"]) == (
        "mlp:1-4-1:relu",
        13 * 4,
        "mse",
    )
    assert (shown["owner"], shown["checkpoints"], shown["datasets"]) == ("anonymous", 0, 0)
    assert "model            mlp:1-4-1:relu" in ok("runs", "show", "r1", env=env)

    with GradientClient(served.address, run="r1") as client:
        client.compute_gradients(torch.ones(2, 1), torch.zeros(2, 1))
        client.apply_update(0.1)
        digest_now = client.state_digest()
    saved = json.loads(ok("checkpoints", "save", "r1", "one", "--json", env=env))
    assert (saved["name"], saved["model_version"]) == ("one", 1)
    assert saved["digest"] == digest_now.digest
    listing = json.loads(ok("checkpoints", "list", "r1", "--json", env=env))
    assert [(c["name"], c["digest"]) for c in listing] == [("one", saved["digest"])]
    assert ok("checkpoints", "list", "r1", env=env).splitlines()[1].startswith("one ")
    digest = json.loads(ok("digest", "r1", "--json", env=env))
    assert digest == {"run": "r1", "digest": digest_now.digest, "model_version": 1}
    assert ok("digest", "r1", env=env) == f"{digest_now.digest}  version 1\n"
    loaded = json.loads(ok("checkpoints", "load", "r1", "one", "--json", env=env))
    assert (loaded["model_version"], loaded["checkpoint_version"]) == (2, 1)
    assert ok("checkpoints", "delete", "r1", "one", env=env) == "deleted checkpoint one\n"
    assert json.loads(ok("checkpoints", "list", "r1", "--json", env=env)) == []
    deleted = json.loads(ok("runs", "delete", "r1", "--json", env=env))
    assert deleted == {"run": "r1", "deleted_checkpoints": 0}
    assert [run["run"] for run in json.loads(ok("runs", "list", "--json", env=env))] == [""]


def test_datasets_from_the_shell(served: GradientServer) -> None:
    with GradientClient(served.address) as client:
        client.upload_dataset("points", torch.rand(6, 1), torch.rand(6, 1))
    env = {"GRADSERVE_SERVER": served.address}
    listed = json.loads(ok("datasets", "list", "", "--json", env=env))
    assert [(d["name"], d["samples"], d["bytes"]) for d in listed["datasets"]] == [
        ("points", 6, 48)
    ]
    assert ok("datasets", "list", "", env=env).splitlines()[1].split()[:3] == ["points", "6", "48"]
    released = json.loads(ok("datasets", "delete", "", "points", "--json", env=env))
    assert released == {"run": "", "name": "points", "released_bytes": 48}
    assert json.loads(ok("datasets", "list", "", "--json", env=env))["datasets"] == []


def test_errors_are_one_line_with_the_trainers_exit_codes(served: GradientServer) -> None:
    refused = gradserve("runs", "delete", "nope", "--server", served.address)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "gradserve: the server refused: NOT_FOUND (run): run: no run 'nope'"
    ]
    assert refused.stdout == ""
    taken = gradserve("runs", "create", "", "--model", "resnet:9", "--server", served.address)
    assert taken.returncode == 1
    assert len(taken.stderr.splitlines()) == 1
    assert "INVALID_ARGUMENT" in taken.stderr

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = gradserve(
        "runs", "list", "--server", f"127.0.0.1:{port}", "--connect-timeout", "0.5"
    )
    assert unreachable.returncode == 3
    assert unreachable.stderr.startswith(
        f"gradserve: cannot reach the server: server at 127.0.0.1:{port}"
    )
    assert len(unreachable.stderr.splitlines()) == 1

    no_server = gradserve("runs", "list")
    assert no_server.returncode == 2
    assert "no server: --server HOST:PORT or GRADSERVE_SERVER" in no_server.stderr
    no_token = gradserve("runs", "list", "--server", served.address, "--token-file", "/nonexistent")
    assert no_token.returncode == 2
    assert len(no_token.stderr.splitlines()) == 1


def test_serve_and_train_are_the_server_and_the_trainer(served: GradientServer) -> None:
    done = gradserve(
        "train", "--server", served.address, "--epochs", "2", "--json", "--metrics-port", "0"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["model_version"] == 1 + 2 * 10
    assert served.store.version == 21
    usage = gradserve("serve", "--help")
    assert usage.returncode == 0
    assert "--checkpoint-dir" in usage.stdout
    trainer = gradserve("train", "--help")
    assert trainer.stdout.startswith("usage: gradserve train ")
