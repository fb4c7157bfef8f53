"""The supervisor's children: replica servers and nginx, in their own process group, killed
with the supervisor (PR_SET_PDEATHSIG), each watched by a thread that wakes the supervisor.

A replica is `python -m gradserve.server.serve` with the supervisor's own arguments, then the
ones that make it a replica: `--replicas 1`, a free loopback port, its own metrics port and its
own checkpoint folder (later flags win in argparse).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from ..config import ServerConfig

PR_SET_PDEATHSIG = 1
LISTENING = "listening on "


def child_setup() -> Callable[[], None]:
    """What a child runs between fork and exec: its own process group (a terminal's Ctrl-C
    reaches the supervisor alone, which stops the set in order) and SIGTERM when the
    supervisor dies, even by SIGKILL. Prepared here, so the child only makes two calls."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def setup() -> None:
        os.setpgid(0, 0)
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before prctl: nobody would signal
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def replica_folder(config: ServerConfig, index: int) -> str | None:
    """Replica `index`'s checkpoint folder: <checkpoint-dir>/replica-<index>, or None."""
    directory = config.checkpoints.directory
    return None if directory is None else str(Path(directory) / f"replica-{index}")


def replica_arguments(argv: Sequence[str], config: ServerConfig, index: int) -> list[str]:
    """The supervisor's arguments, then what makes them replica `index`'s."""
    network = config.network
    metrics_port = network.metrics_port + index if network.metrics_port else 0
    arguments = [*argv, "--replicas", "1", "--host", "127.0.0.1", "--port", "0"]
    arguments += ["--metrics-port", str(metrics_port)]
    folder = replica_folder(config, index)
    if folder is not None:
        arguments += ["--checkpoint-dir", folder]
    return arguments


class Child:
    """A started child process; `exited` is set (and `wake` too) once it has been reaped."""

    def __init__(self, name: str, process: subprocess.Popen[str], wake: threading.Event) -> None:
        self.name = name
        self.process = process
        self.address = ""
        self.exited = threading.Event()
        self._wake = wake
        self._watcher = threading.Thread(target=self._watch, name=f"watch {name}", daemon=True)
        self._watcher.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _watch(self) -> None:
        # A replica's stdout: its `listening on` line gives its address; other lines are passed on.
        if self.process.stdout is not None:
            for line in self.process.stdout:
                if line.startswith(LISTENING) and not self.address:
                    self.address = line.removeprefix(LISTENING).strip()
                    self._wake.set()
                else:
                    print(f"{self.name}: {line.rstrip()}", flush=True)
        self.process.wait()
        self.exited.set()
        self._wake.set()

    def signal(self, signum: int) -> None:
        if not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):  # exited since the check
                self.process.send_signal(signum)

    def wait_or_kill(self, seconds: float) -> int:
        """Waits `seconds` for the child to exit (after a signal), then SIGKILL; its status.
        Signalled once only: a second SIGTERM ends a server's drain, and one arriving while
        its interpreter shuts down kills it by the default action."""
        if not self.exited.wait(seconds):
            self.signal(signal.SIGKILL)
            self.exited.wait()
        self._watcher.join()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return int(self.process.returncode)


def start_replica(
    argv: Sequence[str], config: ServerConfig, index: int, wake: threading.Event
) -> Child:
    command = [sys.executable, "-m", "gradserve.server.serve"]
    process = subprocess.Popen(
        [*command, *replica_arguments(argv, config, index)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        preexec_fn=child_setup(),  # noqa: PLW1509
    )  # fmt: skip
    return Child(f"replica {index}", process, wake)
