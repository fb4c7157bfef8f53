"""--durability sync: an acknowledged change is on disk, even across kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import linear_batch

from gradserve.client.gradient_client import GradientClient, RetryPolicy
from gradserve.errors import FailedPreconditionError, GradserveError
from gradserve.server.checkpoints.files import list_checkpoints, read_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def newest_on_disk(directory: Path) -> int:
    return max(read_checkpoint(path)[0].version for _, path in list_checkpoints(directory))


def test_sync_durability_needs_a_checkpoint_directory(make_server) -> None:
    with pytest.raises(FailedPreconditionError, match="--checkpoint-dir"):
        make_server(durability="sync")


def test_every_acknowledged_update_is_on_disk_when_answered(make_server, tmp_path) -> None:
    server = make_server(checkpoint_dir=str(tmp_path), durability="sync")
    acknowledged: list[int] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        with GradientClient(server.address) as client:
            for _ in range(5):
                client.compute_gradients(*linear_batch(4))
                try:
                    version = client.apply_update(0.01).model_version
                except FailedPreconditionError:
                    continue  # another worker's update took these gradients
                # The save that released this answer is already renamed into place.
                assert newest_on_disk(tmp_path) >= version
                with lock:
                    acknowledged.append(version)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert acknowledged and server.store.version == len(acknowledged)
    saves = list_checkpoints(tmp_path)[-1][0]
    assert saves <= len(acknowledged) + 1  # group commit: never more than one save per change


class DurableServer:
    def __init__(self, directory: Path, log: Path) -> None:
        self.directory, self.log, self.port = directory, log, 0
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        command = [
            sys.executable, str(ROOT / "server" / "serve.py"), f"--port={self.port}", "--metrics-port=0",
            f"--checkpoint-dir={self.directory}", "--durability=sync", "--torch-threads=1",
        ]  # fmt: skip
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT
            )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("listening on "):
                self.port = int(line.rsplit(":", 1)[1])
                return
        raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process.stdout.close()


@pytest.mark.slow
def test_no_acknowledged_update_is_lost_on_kill_9(tmp_path) -> None:
    server = DurableServer(tmp_path / "ckpt", tmp_path / "server.log")
    server.start()
    try:
        for _ in range(3):
            acknowledged: list[int] = []
            seen = threading.Event()
            address = f"127.0.0.1:{server.port}"

            def updates(address: str = address) -> None:
                client = GradientClient(address, timeout=5.0, retry=RetryPolicy(max_attempts=1))
                with client:
                    try:
                        while True:
                            client.compute_gradients(*linear_batch(4))
                            acknowledged.append(client.apply_update(0.01).model_version)
                            if len(acknowledged) >= 5:
                                seen.set()
                    except GradserveError:
                        return  # the kill

            thread = threading.Thread(target=updates)
            thread.start()
            assert seen.wait(60), server.log.read_text()[-2000:]
            server.kill()
            thread.join(timeout=30)
            last = acknowledged[-1]  # every answer the client saw came before the kill
            server.start()
            with GradientClient(f"127.0.0.1:{server.port}", timeout=10.0) as client:
                restored = client.model_info().model_version
            assert restored >= last, (restored, acknowledged[-3:])
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()
