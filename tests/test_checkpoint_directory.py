"""An unusable checkpoint directory: refused at start (exit 2, one line); at run time a failed
save answers with the OS reason, is counted, logged once per streak, and backed off."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from helpers import TIMEOUT, linear_batch
from test_startup_errors import assert_one_line_exit_2, run

from gradserve.client.gradient_client import GradientClient
from gradserve.errors import FailedPreconditionError
from gradserve.server.checkpoints.files import list_checkpoints
from gradserve.v1 import gradserve_pb2 as pb

LOGGER = "gradserve.server.checkpoints.files"


def failures(server) -> float:
    value = server.metrics.registry.get_sample_value("gradserve_checkpoint_failures_total")
    return value or 0.0


def poll(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def step(client: GradientClient) -> None:
    x, y = linear_batch(4)
    client.compute_gradients(x, y)
    client.apply_update(0.01)


def save(stub) -> pb.SaveCheckpointResponse:
    return stub.SaveCheckpoint(pb.SaveCheckpointRequest(), timeout=TIMEOUT)


def test_a_directory_that_is_a_regular_file_exits_2_in_one_line(tmp_path) -> None:
    regular = tmp_path / "ckpt"
    regular.write_text("not a directory")
    result = run("server/serve.py", "--port", "0", f"--checkpoint-dir={regular}")
    assert_one_line_exit_2(result, "--checkpoint-dir", str(regular), "unusable")


def test_a_directory_under_a_regular_file_is_refused(make_server, tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(FailedPreconditionError, match="Not a directory"):
        make_server(checkpoint_dir=str(tmp_path / "file" / "ckpt"))


def test_a_missing_directory_is_created_and_kill_leftovers_removed(make_server, tmp_path) -> None:
    leftover = tmp_path / "ckpt" / ".tmp-checkpoint-0000000007-v3-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "tensors.safetensors").write_bytes(b"half")
    make_server(checkpoint_dir=str(tmp_path / "ckpt"))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == []


def test_failing_saves_back_off_log_once_count_and_recover(
    make_server, make_stub, tmp_path, caplog
) -> None:
    directory = tmp_path / "ckpt"
    server = make_server(checkpoint_dir=str(directory), checkpoint_every_updates=1)
    stub = make_stub(server)
    # Root ignores permission bits: replacing the directory by a regular file fails for real.
    shutil.rmtree(directory)
    directory.write_text("the disk was swapped")
    with caplog.at_level(logging.INFO, logger=LOGGER), GradientClient(server.address) as client:
        step(client)
        poll(lambda: failures(server) >= 1)
        first = time.monotonic()
        poll(lambda: failures(server) >= 3)
        # Without backoff three failures take ~20 ms; with it at least 0.1 + 0.2 s.
        assert time.monotonic() - first >= 0.25
        with pytest.raises(grpc.RpcError) as caught:
            save(stub)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "File exists" in (caught.value.details() or "")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        directory.unlink()
        saved = save(stub)
        assert saved.model_version == 1
        assert [p.name for _, p in list_checkpoints(directory)] == [saved.name]
    recovered = [r for r in caplog.records if "work again" in r.getMessage()]
    assert len(recovered) == 1
    assert not any(r.exc_info for r in caplog.records)


def test_a_failed_final_checkpoint_logs_one_line(make_server, tmp_path, caplog) -> None:
    directory = tmp_path / "ckpt"
    server = make_server(checkpoint_dir=str(directory))
    shutil.rmtree(directory)
    directory.write_text("gone")
    with caplog.at_level(logging.INFO):
        server.stop(0)
    assert server.final_checkpoint_failed
    # The failure's own line (once per streak) and the shutdown's; no traceback.
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 2 and "no final checkpoint" in lines[1], lines
    assert not any(r.exc_info for r in caplog.records)
    directory.unlink()  # the fixture's own stop() then saves normally


@contextlib.contextmanager
def small_tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def test_a_full_filesystem_answers_resource_exhausted(make_server, make_stub, tmp_path) -> None:
    with small_tmpfs(tmp_path / "small") as directory:
        server = make_server(checkpoint_dir=str(directory / "ckpt"))
        stub = make_stub(server)
        with GradientClient(server.address) as client:
            step(client)
        filler = directory / "filler"
        with contextlib.suppress(OSError), filler.open("wb", buffering=0) as handle:
            while True:
                handle.write(b"\0" * 4096)
        with pytest.raises(grpc.RpcError) as caught:
            save(stub)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "No space left on device" in (caught.value.details() or "")
        assert failures(server) == 1
        filler.unlink()
        assert save(stub).model_version == 1
        server.stop(0)
