"""Parameters out and back in: `gradserve export` and the trainer's --save write safetensors
that load with `safetensors` alone, equal to GetParameters bitwise; --init-from of such a file
continues a run bitwise as if it had not stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gradserve.client.gradient_client import GradientClient
from gradserve.client.train import main as train_main
from gradserve.server.app import GradientServer

TIMEOUT = 120.0


def gradserve(*args: str) -> subprocess.CompletedProcess[str]:
    """The `gradserve` console script, as a user runs it."""
    script = Path(sys.executable).with_name("gradserve")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRADSERVE_")}
    return subprocess.run(
        [str(script), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def train(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code = train_main([*args, "--metrics-port", "0", "--json", "--progress", "never"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def parameters_of(server: GradientServer, run: str) -> dict[str, torch.Tensor]:
    with GradientClient(server.address, run=run) as client:
        return client.get_parameters()[1]


def assert_bitwise(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name, value in left.items():
        assert value.dtype == right[name].dtype, name
        assert torch.equal(value, right[name]), name


def test_export_loads_with_safetensors_alone_and_equals_get_parameters(
    make_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_server()
    train(
        capsys,
        "--server",
        server.address,
        "--run",
        "mlp",
        "--model",
        "mlp:1-8-1:tanh",
        "--loss",
        "mse",
        "--optimizer",
        "adam",
        "--epochs",
        "2",
    )
    done = gradserve(
        "export", "mlp", "--out", str(tmp_path / "out"), "--server", server.address, "--json"
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    file = tmp_path / "out" / "model.safetensors"
    assert answer["file"] == str(file)
    exported = load_file(str(file))
    assert_bitwise(exported, parameters_of(server, "mlp"))
    assert answer["tensors"] == 4
    people = gradserve(
        "export", "mlp", "--out", str(tmp_path / "again"), "--server", server.address
    )
    assert people.returncode == 0, people.stderr
    assert people.stdout.startswith(f"wrote {tmp_path / 'again' / 'model.safetensors'}: 4 tensors")


def test_save_writes_the_final_parameters(
    make_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_server()
    summary = train(
        capsys,
        "--server",
        server.address,
        "--epochs",
        "3",
        "--save",
        str(tmp_path / "final.safetensors"),
    )
    saved = load_file(str(tmp_path / "final.safetensors"))
    assert_bitwise(saved, parameters_of(server, ""))
    assert saved["w"].tolist() == summary["parameters"]["w"]


@pytest.mark.parametrize("source", ["export", "save"])
def test_init_from_continues_a_run_bitwise(
    make_server, tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str
) -> None:
    server = make_server()
    common = ("--server", server.address, "--model", "mlp:1-8-1:tanh", "--loss", "mse")
    file = tmp_path / "first.safetensors"
    first = ["--run", "first", *common, "--epochs", "4", "--lr", "0.05"]
    if source == "save":
        first += ["--save", str(file)]
    train(capsys, *first)
    if source == "export":
        done = gradserve("export", "first", "--out", str(tmp_path), "--server", server.address)
        assert done.returncode == 0, done.stderr
        file = tmp_path / "model.safetensors"
    # A new run (the same seed: the same data): its initial parameters replaced by the file's.
    train(
        capsys,
        "--run",
        "second",
        *common,
        "--seed",
        "0",
        "--epochs",
        "3",
        "--lr",
        "0.05",
        "--init-from",
        str(file),
    )
    train(capsys, "--run", "whole", *common, "--epochs", "7", "--lr", "0.05")
    continued, whole = parameters_of(server, "second"), parameters_of(server, "whole")
    assert_bitwise(continued, whole)
    assert not torch.equal(continued["0.weight"], parameters_of(server, "first")["0.weight"])


def test_init_from_a_missing_or_wrong_file_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "text.safetensors").write_text("not tensors")
    cases = (
        (tmp_path / "none", "no such file"),
        (tmp_path / "text.safetensors", "not a safetensors"),
    )
    for file, says in cases:
        code = train_main(["--init-from", str(file), "--metrics-port", "0", "--epochs", "1"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert len(lines) == 1
        assert lines[0].startswith(f"gradserve-train: {file}: {says}")


def test_a_model_past_the_message_limit_goes_in_chunks(
    make_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 264193 float32 parameters: 1.06 MB, past a 1 MiB message limit for Get/SetParameters.
    server = make_server(max_message_bytes=1 << 20)
    common = (
        "--server",
        server.address,
        "--model",
        "mlp:1-512-512-1",
        "--loss",
        "mse",
        "--data-on-server",
        "off",
        "--lr",
        "0.01",
    )
    file = tmp_path / "big.safetensors"
    train(capsys, "--run", "first", *common, "--epochs", "1", "--save", str(file))
    train(capsys, "--run", "second", *common, "--epochs", "1", "--init-from", str(file))
    train(capsys, "--run", "whole", *common, "--epochs", "2")
    with GradientClient(server.address, run="second") as client:
        continued = client.stream_parameters()[1]
    with GradientClient(server.address, run="whole") as client:
        whole = client.stream_parameters()[1]
    assert_bitwise(continued, whole)
    assert_bitwise(load_file(str(file)), parameters_of_first(server))


def parameters_of_first(server: GradientServer) -> dict[str, torch.Tensor]:
    with GradientClient(server.address, run="first") as client:
        return client.stream_parameters()[1]
