"""Exact resume on the Train stream: the default transport survives three kill -9s of the
server and ends bitwise where an uninterrupted run does (the unary loop: test_resume.py)."""

from __future__ import annotations

import dataclasses
import random
import threading
import time

import pytest
import torch

from gradserve.client.config import TransportConfig
from tests import test_resume as resume_test
from tests.test_resume import CONFIG, ServerProcess, version_of, wait_for_version

# The stream is fast: a longer run, one step per request and one request in flight, so the
# kills land mid-run.
STREAM_CONFIG = dataclasses.replace(
    CONFIG,
    schedule=dataclasses.replace(CONFIG.schedule, epochs=100),
    transport=TransportConfig(kind="stream", steps_per_request=1, window=1),
)
STEPS = STREAM_CONFIG.schedule.epochs * 10


def run_training(address: str) -> tuple[int, dict[str, torch.Tensor]]:
    return resume_test.run_training(address, STREAM_CONFIG)


@pytest.mark.slow
def test_streamed_training_survives_three_kill_9s_bitwise(make_server, tmp_path) -> None:
    reference = make_server()
    expected_version, expected = run_training(reference.address)
    assert expected_version == 1 + STEPS

    server = ServerProcess(tmp_path / "checkpoints", tmp_path / "server.log")
    server.start()
    rng = random.Random(7)
    thirds = [(STEPS * i // 3, STEPS * (i + 1) // 3) for i in range(3)]
    kill_at = [rng.randint(low + 20, high - 20) for low, high in thirds]
    outcome: dict[str, object] = {}

    def train_in_thread() -> None:
        try:
            outcome["result"] = run_training(server.address)
        except BaseException as error:
            outcome["error"] = error

    trainer = threading.Thread(target=train_in_thread)
    killed_at = []
    try:
        trainer.start()
        for target in kill_at:
            deadline = time.monotonic() + 60
            while (version := version_of(server.address) or 0) < target:
                assert trainer.is_alive(), outcome
                assert time.monotonic() < deadline, f"training stuck at version {version}"
                time.sleep(0.005)  # polling another process's progress
            server.kill()
            killed_at.append(version)
            server.start()
            wait_for_version(server.address)
        trainer.join(timeout=120)
        assert not trainer.is_alive(), "training did not finish"
    finally:
        server.stop()
    assert "error" not in outcome, outcome.get("error")
    version, parameters = outcome["result"]  # type: ignore[misc]
    assert version == expected_version
    for name, value in expected.items():
        assert torch.equal(parameters[name], value), (name, parameters[name], value)
    log = (tmp_path / "server.log").read_text()
    assert log.count("restored checkpoint") == 3, killed_at
