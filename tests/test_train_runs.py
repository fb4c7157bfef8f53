"""The trainer on a named run: `--run NAME` creates it and trains it as a fresh server's default
run (bitwise the seed loop, over both transports), trains an existing one from its parameters,
forks with --from-checkpoint, and after a server restart checks the resumed state's digest.

Fork and digest checks skip while the server refuses forks ("not served yet") or answers
GetStateDigest/ListCheckpoints UNIMPLEMENTED.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import torch
from helpers import run_folder

from gradserve.client.arguments import parse_args
from gradserve.client.data import seed_data
from gradserve.client.digest_check import verify_resumed_digest
from gradserve.client.gradient_client import GradientClient, RetryPolicy
from gradserve.client.loop import train as train_loop
from gradserve.client.metrics import TrainMetrics
from gradserve.client.recorder import Recorder
from gradserve.client.session import make_plan, make_transport
from gradserve.client.transport import ResumeError
from tests.test_client_runs import served, train_steps
from tests.test_resume import CONFIG, ServerProcess
from tests.test_train_cli import assert_parameters_equal, seed_loop, train


def local_loop(start: dict[str, torch.Tensor], epochs: int, lr: float = 0.01) -> dict:
    """The seed loop's arithmetic on the seed data from `start` (not from the seed's w, b)."""
    data = seed_data(0, 100).dataset
    w = start["w"].clone().requires_grad_()
    b = start["b"].clone().requires_grad_()
    for _ in range(epochs):
        for i in range(0, 100, 10):
            loss = ((w * data.inputs[i : i + 10] + b - data.targets[i : i + 10]) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                for parameter in (w, b):
                    parameter.sub_(lr * parameter.grad)  # type: ignore[operator]
                    parameter.grad.zero_()  # type: ignore[union-attr]
    return {"w": [w.item()], "b": [b.item()]}


def test_the_run_flag_and_its_environment_variable() -> None:
    assert parse_args([], environ={}).run.name == ""
    assert parse_args([], environ={"GRADSERVE_RUN": "trainer-7"}).run.name == "trainer-7"
    config = parse_args(["--run", "child", "--from-checkpoint", "parent/best"], environ={})
    assert (config.run.name, config.run.from_checkpoint) == ("child", "parent/best")


def test_from_checkpoint_without_run_exits_2() -> None:
    done = train("--from-checkpoint", "parent/best")
    assert done.returncode == 2 and "--from-checkpoint needs --run" in done.stderr


@pytest.mark.parametrize("transport", ["stream", "unary"])
def test_a_new_run_on_a_fresh_embedded_server_is_bitwise_the_seed_loop(transport: str) -> None:
    done = train("--run", "mine", "--epochs", "3", "--json", "--transport", transport)
    assert done.returncode == 0, done.stderr
    summary = done.summary()
    assert (summary["run"], summary["model_version"]) == ("mine", 31)
    assert_parameters_equal(summary, seed_loop(epochs=3))


def test_a_new_run_on_a_remote_server_leaves_the_default_run_alone(make_server) -> None:
    server = make_server()
    done = train("--server", server.address, "--run", "box-1", "--epochs", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert_parameters_equal(done.summary(), seed_loop(epochs=3))
    assert server.store.version == 0
    with GradientClient(server.address) as client:
        runs = {r.run: r.model_version for r in client.list_runs()}
    assert runs == {"": 0, "box-1": 31}


def test_an_existing_run_is_trained_from_its_own_parameters(make_server) -> None:
    server = make_server()
    with GradientClient(server.address, run="theirs") as client:
        client.create_run("theirs", model="linear", seed=7)
        version, start = client.get_parameters()
    done = train("--server", server.address, "--run", "theirs", "--epochs", "2", "--json")
    assert done.returncode == 0, done.stderr
    summary = done.summary()
    # No seed init (the seed's w would be another value), and no version bound to the plan.
    assert summary["model_version"] == version + 20
    assert summary["parameters"] == local_loop(start, epochs=2)


def test_from_checkpoint_forks_and_trains_from_the_checkpoint(make_server, tmp_path) -> None:
    server = make_server(checkpoint_dir=str(tmp_path / "checkpoints"))
    with GradientClient(server.address, run="parent") as parent:
        parent.create_run("parent", model="linear", seed=8)
        train_steps(parent, range(3), 0.1)
        saved = parent.save_checkpoint()
        _, at_checkpoint = parent.get_parameters()
    done = train(
        "--server", server.address, "--run", "child",
        "--from-checkpoint", f"parent/{saved.name}", "--epochs", "1", "--json",
    )  # fmt: skip
    if done.returncode != 0 and ("not served yet" in done.stderr or "UNIMPLEMENTED" in done.stderr):
        pytest.skip(f"the server does not fork yet: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    assert done.summary()["parameters"] == local_loop(at_checkpoint, epochs=1)


def run_on(address: str, run: str) -> tuple[int, dict[str, torch.Tensor]]:
    """The seed training of test_resume.py, on run `run` (created when missing)."""
    seed = seed_data(0, 100)
    retry = RetryPolicy(max_attempts=40, max_backoff=0.5)
    with GradientClient(address, timeout=10.0, retry=retry, run=run) as client:
        if run not in {r.run for r in client.list_runs()}:
            client.create_run(run, model="linear")
        train_loop(
            client,
            make_plan(CONFIG, seed.dataset),
            make_transport(client, CONFIG),
            Recorder(TrainMetrics("test", "linear")),
            initial={"w": seed.initial_w, "b": seed.initial_b},
        )
        return client.get_parameters()


@pytest.mark.slow
def test_a_run_resumes_bitwise_after_kill_9_and_its_digest_is_checked(
    make_server, tmp_path, caplog
) -> None:
    expected_version, expected = run_on(make_server().address, "mine")
    server = ServerProcess(tmp_path / "checkpoints", tmp_path / "server.log")
    server.start()
    outcome: dict[str, object] = {}

    def trainer() -> None:
        try:
            outcome["result"] = run_on(server.address, "mine")
        except BaseException as error:
            outcome["error"] = error

    caplog.set_level(logging.INFO, logger="gradserve.client")
    thread = threading.Thread(target=trainer)
    try:
        thread.start()
        deadline = time.monotonic() + 60
        with GradientClient(server.address, timeout=2.0, run="mine") as probe:
            while True:  # polling another process's progress, bounded
                assert thread.is_alive(), outcome
                assert time.monotonic() < deadline, "training stuck"
                try:
                    if probe.model_info().model_version >= 120:
                        break
                except Exception:  # not created yet
                    pass
        server.kill()
        server.start()
        thread.join(timeout=120)
        assert not thread.is_alive(), "training did not finish"
    finally:
        server.stop()
    assert "error" not in outcome, outcome.get("error")
    version, parameters = outcome["result"]  # type: ignore[misc]
    assert version == expected_version
    for name, value in expected.items():
        assert torch.equal(parameters[name], value), name
    checks = [r.message for r in caplog.records if r.message.startswith("resumed state")]
    assert checks, "the resync did not check the digest"
    assert all(c.startswith("resumed state verified") or "UNIMPLEMENTED" in c or
               "not verified" in c for c in checks), checks  # fmt: skip


def test_a_resumed_state_that_is_not_its_checkpoint_is_a_resume_error(make_server, tmp_path):  # type: ignore[no-untyped-def]
    server = make_server(checkpoint_dir=str(tmp_path / "checkpoints"))
    with GradientClient(server.address, run="again") as client:
        client.create_run("again", model="linear", seed=1)
        train_steps(client, range(3), 0.1)
        served(client.state_digest)
        saved = client.save_checkpoint()
        # The checkpoint of version 3 says it holds another state than the run's at version 3
        # (a run made again under its name no longer lists the old one: incarnations).
        manifest = run_folder(tmp_path / "checkpoints", "again") / saved.name / "manifest.json"
        document = json.loads(manifest.read_text())
        document["state_digest"] = "0" * 64
        manifest.write_text(json.dumps(document))
        with pytest.raises(ResumeError) as caught:
            verify_resumed_digest(client)
        assert "0" * 64 in str(caught.value)
        assert client.state_digest().digest in str(caught.value)


def test_two_trainer_processes_train_two_runs_side_by_side_bitwise(server) -> None:
    """Two `client/train.py --run` processes at once on one server: each run ends bitwise at
    its own seed loop, and the default run is untouched."""
    results: dict[str, object] = {}

    def run(name: str, seed: int) -> None:
        results[name] = train(
            "--server", server.address, "--run", name, "--seed", str(seed), "--epochs", "5",
            "--json",
        )  # fmt: skip

    threads = [threading.Thread(target=run, args=a) for a in (("alpha", 1), ("beta", 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    for name, seed in (("alpha", 1), ("beta", 2)):
        done = results[name]
        assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
        assert_parameters_equal(done.summary(), seed_loop(seed=seed, epochs=5))  # type: ignore[attr-defined]
    assert server.store.version == 0
