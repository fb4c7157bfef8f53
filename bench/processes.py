"""Servers under test as separate processes on loopback: started, read for their address, stopped."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
# glibc: keep freed memory in the heap instead of fresh mmap()s per large buffer (CONVENTIONS.md).
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
START_TIMEOUT = 60.0
# One intra-op thread for the server and for the local loops alike: on 2 shared cores, two
# OpenMP threads collapse under contention (MLP batch 256, load 6.9: 2,900-7,200 samples/s
# with 2 threads against 80,000-92,000 with 1).
TORCH_THREADS = 1


class ServerProcess:
    """`python <script> ... --port 0` in its own process; `address` from its `listening on` line."""

    def __init__(
        self, script: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> None:
        self.command = [sys.executable, str(ROOT / script), "--port", "0", *args]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self.address = ""
        # The Tinker API's URL, when the server serves it (printed before `listening on`).
        self.tinker_url = ""
        # Closed in stop(): the server's stderr, kept for the error message if it fails to start.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:
                lines.put(line)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.address:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                self.stop()
                self._stderr.seek(0)
                message = self._stderr.read()[-2000:]
                self._stderr.close()
                raise RuntimeError(f"{self.command} did not start: {message}")
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line.startswith("listening on "):
                self.address = line.split(" ", 2)[2].strip()
            elif line.startswith("tinker API listening on "):
                self.tinker_url = line.rsplit(" ", 1)[1].strip()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_bytes(self) -> int:
        """VmRSS of the server process."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if self.process is not None and self.process.stdout is not None:
            self._reader.join(timeout=5)
            self.process.stdout.close()

    def close(self) -> None:
        self.stop()
        self._stderr.close()


def gradserve_server(
    model: str, *extra: str, env: Mapping[str, str] | None = None
) -> ServerProcess:
    args = ["--metrics-port", "0", "--model", model, "--log-level", "WARNING"]
    args += ["--torch-threads", str(TORCH_THREADS), *extra]
    return ServerProcess("server/serve.py", args, env)


def echo_server(env: Mapping[str, str] | None = None) -> ServerProcess:
    return ServerProcess("bench/echo_server.py", (), env)
