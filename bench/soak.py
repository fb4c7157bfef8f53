"""A bounded soak: steady load on a server subprocess for --seconds, its RSS sampled.

    python bench/soak.py --seconds 600 --json soak.json

Starts `python server/serve.py --port 0 --metrics-port 0`, reads its `listening on HOST:PORT`
line (bounded wait), then runs client threads until the time is up: unary workers
(ComputeGradients x K then ApplyUpdate) and Train-stream workers (requests of a few batches and
an update). Every --sample-every seconds it reads VmRSS from /proc/PID/status. At the end it
prints a table and writes JSON: start/end/max RSS, growth, calls by kind, errors. It stops by
itself: the clients stop at the deadline and the server gets SIGTERM (SIGKILL if it lingers).

ApplyUpdate racing another worker's update can find nothing accumulated (FAILED_PRECONDITION):
that is the contract, counted as `rejected`, not as an error. Anything else is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gradserve.client.gradient_client import (  # noqa: E402
    NO_RETRY,
    GradientClient,
    TrainStep,
)
from gradserve.errors import FailedPreconditionError, GradserveError  # noqa: E402

LISTENING = "listening on "


@dataclass
class Tally:
    """Counts shared by the worker threads (one lock; the counts are cheap to update)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def add(self, kind: str, count: int = 1) -> None:
        with self.lock:
            self.calls[kind] += count

    def reject(self, kind: str) -> None:
        with self.lock:
            self.rejected[kind] += 1

    def error(self, kind: str, error: BaseException) -> None:
        with self.lock:
            self.errors[kind] += 1
            if len(self.first_errors) < 10:
                self.first_errors.append(f"{kind}: {type(error).__name__}: {error}")


def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str, list[str]]:
    command = [
        sys.executable,
        str(ROOT / "server" / "serve.py"),
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--host",
        "127.0.0.1",
        "--model",
        args.model,
        "--torch-threads",
        str(args.torch_threads),
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    log: list[str] = []

    def drain() -> None:
        # Keeps reading for the server's whole life, so its pipe never fills.
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
            if len(log) < 200:
                log.append(line.rstrip())
        lines.put(None)

    threading.Thread(target=drain, name="soak-server-output", daemon=True).start()
    deadline = time.monotonic() + args.start_timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(0.01, remaining)) if remaining > 0 else None
        except queue.Empty:
            line = None
        if line is None:
            stop_server(process)
            raise SystemExit(
                f"soak: no '{LISTENING}' line from the server within {args.start_timeout:g}s "
                f"(exit {process.poll()}); output:\n" + "\n".join(log)
            )
        if line.startswith(LISTENING):
            return process, line[len(LISTENING) :].strip(), command


def stop_server(process: subprocess.Popen[str], grace: float = 15.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=grace)


def batches(
    generator: torch.Generator, inputs: int, classes: int, size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        x = torch.randn(size, inputs, generator=generator)
        if classes:
            yield x, torch.randint(0, classes, (size,), generator=generator)
        else:
            yield x, 2 * x + 1


def unary_worker(
    address: str, index: int, args: argparse.Namespace, stop: threading.Event, tally: Tally
) -> None:
    data = batches(torch.Generator().manual_seed(index), args.inputs, args.classes, args.batch)
    with GradientClient(address, timeout=30.0, retry=NO_RETRY) as client:
        while not stop.is_set():
            try:
                for _ in range(args.batches_per_update):
                    client.compute_gradients(*next(data))
                    tally.add("ComputeGradients")
            except GradserveError as error:
                tally.error("ComputeGradients", error)
                continue
            try:
                client.apply_update(args.learning_rate)
                tally.add("ApplyUpdate")
            except FailedPreconditionError:
                # Another worker's update took what this one accumulated: by contract.
                tally.reject("ApplyUpdate")
            except GradserveError as error:
                tally.error("ApplyUpdate", error)


def stream_worker(
    address: str, index: int, args: argparse.Namespace, stop: threading.Event, tally: Tally
) -> None:
    data = batches(torch.Generator().manual_seed(index), args.inputs, args.classes, args.batch)

    def requests() -> Iterator[Sequence[TrainStep]]:
        # One stream per `stream_requests` requests, then a fresh one: streams open and close.
        for _ in range(args.stream_requests):
            if stop.is_set():
                return
            step = TrainStep.of(
                batches=[next(data) for _ in range(args.batches_per_update)],
                learning_rate=args.learning_rate,
            )
            yield [step]

    with GradientClient(address, timeout=30.0, retry=NO_RETRY) as client:
        while not stop.is_set():
            try:
                for _ in client.train_stream(requests(), window=4, timeout=120.0):
                    tally.add("Train")
            except GradserveError as error:
                tally.error("Train", error)


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(1)
    process, address, command = start_server(args)
    tally = Tally()
    stop = threading.Event()
    samples: list[tuple[float, int, int]] = []
    exit_code: int | None = None
    started = time.monotonic()
    try:
        workers = [
            threading.Thread(
                target=stream_worker if index < args.stream_clients else unary_worker,
                args=(address, index, args, stop, tally),
                name=f"soak-client-{index}",
                daemon=True,
            )
            for index in range(args.stream_clients + args.unary_clients)
        ]
        first = rss_kib(process.pid)
        assert first is not None, "the server exited before the load started"
        samples.append((0.0, first, 0))
        for worker in workers:
            worker.start()
        deadline = started + args.seconds
        print(f"soak: server pid {process.pid} at {address}, {args.seconds:g}s", flush=True)
        print(f"{'t (s)':>8} {'RSS (MiB)':>10} {'calls':>9}", flush=True)
        next_sample = started + args.sample_every
        while True:
            now = time.monotonic()
            # The clock paces the sampling; the stop event ends the wait early on a crash.
            stop.wait(max(0.0, min(next_sample, deadline) - now))
            now = time.monotonic()
            rss = rss_kib(process.pid)
            if rss is None or process.poll() is not None:
                tally.error("server", RuntimeError(f"server exited ({process.poll()})"))
                break
            with tally.lock:
                done = sum(tally.calls.values())
            samples.append((now - started, rss, done))
            print(f"{now - started:8.1f} {rss / 1024:10.1f} {done:9d}", flush=True)
            if now >= deadline:
                break
            next_sample += args.sample_every
        stop.set()
        for worker in workers:
            worker.join(timeout=60.0)
            if worker.is_alive():
                tally.error("client", RuntimeError(f"{worker.name} did not stop within 60s"))
    finally:
        stop.set()
        exit_code = stop_server(process)
    duration = time.monotonic() - started
    start_kib = samples[0][1]
    # Warm-up (imports, first allocations of the allocator's arenas) is over after the first
    # sample under load: growth is also reported from there.
    warm_kib = samples[1][1] if len(samples) > 1 else start_kib
    end_kib = samples[-1][1]
    max_kib = max(sample[1] for sample in samples)
    calls = dict(tally.calls)
    report: dict[str, object] = {
        "command": " ".join(command),
        "soak_command": " ".join([sys.executable, *sys.argv]),
        "address": address,
        "duration_s": round(duration, 1),
        "rss_start_mib": round(start_kib / 1024, 1),
        "rss_warm_mib": round(warm_kib / 1024, 1),
        "rss_end_mib": round(end_kib / 1024, 1),
        "rss_max_mib": round(max_kib / 1024, 1),
        "rss_growth_mib": round((end_kib - start_kib) / 1024, 1),
        "rss_growth_pct": round(100.0 * (end_kib - start_kib) / start_kib, 1),
        "rss_growth_after_warmup_pct": round(100.0 * (end_kib - warm_kib) / warm_kib, 1),
        "calls": calls,
        "calls_total": sum(calls.values()),
        "calls_per_s": round(sum(calls.values()) / duration, 1),
        "rejected": dict(tally.rejected),
        "errors": sum(tally.errors.values()),
        "errors_by_kind": dict(tally.errors),
        "first_errors": tally.first_errors,
        "server_exit_code": exit_code,
        "samples": [
            {"t_s": round(t, 1), "rss_mib": round(kib / 1024, 1), "calls": done}
            for t, kib, done in samples
        ],
        "settings": {
            key: value
            for key, value in vars(args).items()
            if key not in ("json",) and not callable(value)
        },
    }
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the load runs")
    parser.add_argument("--sample-every", type=float, default=5.0, help="RSS sample interval (s)")
    parser.add_argument("--unary-clients", type=int, default=2)
    parser.add_argument("--stream-clients", type=int, default=1)
    parser.add_argument("--model", default="mlp:32-64-10")
    parser.add_argument("--inputs", type=int, default=32, help="the model's input features")
    parser.add_argument("--classes", type=int, default=10, help="0: regression targets like x")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches-per-update", type=int, default=4)
    parser.add_argument("--stream-requests", type=int, default=50, help="requests per stream")
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--torch-threads", type=int, default=1, help="the server's")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=None, help="where to write the report")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(
        "soak: {duration_s}s, RSS start {rss_start_mib} MiB, end {rss_end_mib} MiB, max "
        "{rss_max_mib} MiB, growth {rss_growth_mib} MiB ({rss_growth_pct} %; "
        "{rss_growth_after_warmup_pct} % after warm-up), {calls_total} calls "
        "({calls_per_s}/s), {errors} errors".format(**report),
        flush=True,
    )
    print(f"soak: calls {report['calls']}, rejected {report['rejected']}", flush=True)
    for line in report["first_errors"]:  # type: ignore[attr-defined]
        print(f"soak: error {line}", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"soak: wrote {args.json}", flush=True)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
