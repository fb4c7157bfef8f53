"""`python bench/aio_compare.py`: grpc.aio against the thread-pool server, on the same workloads.

Four servers, each its own process on loopback: the bare echo on the thread-pool server
(bench/echo_server.py) and on grpc.aio (bench/aio_servers.py), gradserve as it serves
(server/serve.py) and gradserve's unary RPCs through an aio adapter over the same servicer and
store (bench/aio_servers.py). Rows, each aio against its thread-pool twin in the same repeat:
- the bare echo at 1, 4 and 8 client processes (calls/s, p50, p99);
- the unary seed step, 1000 steps: the bare prototype's arithmetic, and gradserve's
  ComputeGradients + ApplyUpdate (bitwise against the local loop);
- gradserve's ComputeGradients at 1, 4 and 8 client processes.
The clients are the same synchronous clients for both servers. bench/README.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `gradserve` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.baselines import BareClient, local_seed_loop
from bench.concurrency import collect_rounds
from bench.processes import TORCH_THREADS, ServerProcess, echo_server, gradserve_server
from bench.rows import Row
from bench.run import table
from bench.workloads import run_unary, seed_batches, unary_sizes
from gradserve.client.data import seed_data
from gradserve.client.gradient_client import NO_RETRY, GradientClient

SERVER_FLAGS = ("--model", "linear", "--log-level", "WARNING", "--torch-threads", "1")
MAX_CALLS = 200_000
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "aio_compare.json"
# (label, kind): kind "echo" calls the bare Unary method, "gradserve" ComputeGradients.
Target = tuple[str, str, str]


def aio_echo_server() -> ServerProcess:
    return ServerProcess("bench/aio_servers.py", ("--kind", "echo"))


def aio_gradserve_server() -> ServerProcess:
    return ServerProcess("bench/aio_servers.py", ("--kind", "gradserve", *SERVER_FLAGS))


def _client(
    targets: Sequence[Target],
    sizes: tuple[int, int],
    rounds: int,
    duration: float,
    barrier: Any,
    results: Any,
) -> None:
    """One client process: per round, `duration` seconds on each target in turn."""
    torch.set_num_threads(TORCH_THREADS)
    inputs, labels = seed_batches(1)[0]
    calls: dict[str, Any] = {}
    closers = []
    for label, kind, address in targets:
        if kind == "echo":
            bare = BareClient(address)
            request = bare.request(*sizes)
            calls[label] = lambda bare=bare, request=request: bare.call(request, timeout=10)
            closers.append(bare.close)
        else:
            client = GradientClient(address, timeout=10, retry=NO_RETRY)
            client.wait_until_ready(60)
            calls[label] = lambda client=client: client.compute_gradients(inputs, labels)
            closers.append(client.close)
    for round_index in range(rounds):
        for label, _, _ in targets:
            call = calls[label]
            barrier.wait(timeout=300)
            latencies: list[float] = []
            errors = 0
            started = time.perf_counter()
            deadline = started + duration
            while time.perf_counter() < deadline and len(latencies) < MAX_CALLS:
                call_started = time.perf_counter()
                try:
                    call()
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - call_started)
            results.put((round_index, label, latencies, errors, time.perf_counter() - started))
    for close in closers:
        close()


def _concurrent(
    targets: Sequence[Target], count: int, sizes: tuple[int, int], rounds: int, duration: float
) -> dict[tuple[int, str], tuple[float, float, float, int]]:
    """(round, label) -> (calls/s, p50 ms, p99 ms, errors) with `count` client processes."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count)
    results = context.Queue()
    processes = [
        context.Process(target=_client, args=(targets, sizes, rounds, duration, barrier, results))
        for _ in range(count)
    ]
    parts = collect_rounds(processes, results, count * rounds * len(targets))
    figures = {}
    for key, collected in parts.items():
        latencies = sorted(x for part in collected for x in part[0])
        elapsed = max(part[2] for part in collected)
        errors = sum(part[1] for part in collected) + (count - len(collected))
        if latencies and elapsed:
            p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            figures[key] = (
                len(latencies) / elapsed,
                statistics.median(latencies) * 1e3,
                p99 * 1e3,
                errors,
            )
    return figures


def concurrency_rows(
    what: str, aio: Target, threads: Target, sizes: tuple[int, int], rounds: int, duration: float
) -> list[Row]:
    rows = []
    for count in (1, 4, 8):
        figures = _concurrent((threads, aio), count, sizes, rounds, duration)
        name = f"{what}, {count} client{'s' if count > 1 else ''}"
        rate = Row("aio", f"{name}: calls/s", "calls/s", "thread-pool server")
        p50 = Row("aio", f"{name}: p50", "ms", "thread-pool p50")
        p99 = Row("aio", f"{name}: p99", "ms", "thread-pool p99")
        errors = 0
        for round_index in range(rounds):
            ours, theirs = (
                figures.get((round_index, aio[0])),
                figures.get((round_index, threads[0])),
            )
            if ours is None or theirs is None:
                errors += 1
                continue
            for index, row in enumerate((rate, p50, p99)):
                row.ours.append(ours[index])
                row.baseline.append(theirs[index])
            errors += ours[3] + theirs[3]
        rate.notes = f"{errors} errors (both servers); {rounds} rounds of {duration:g} s"
        rows += [rate, p50, p99]
    return rows


def seed_rows(
    repeats: int, aio_echo: str, echo: str, aio_ours: str, ours: str
) -> tuple[list[Row], tuple[int, int]]:
    data = seed_data(0)
    batches = seed_batches()
    bare = Row("aio", "seed 1000 steps, bare prototype's arithmetic", "ms", "thread-pool")
    step = Row("aio", "seed 1000 steps, gradserve unary CG+AU", "ms", "thread-pool gradserve")
    sizes = unary_sizes(ours, *batches[0])
    bare_aio, bare_threads = BareClient(aio_echo), BareClient(echo)
    with (
        GradientClient(aio_ours, timeout=60) as on_aio,
        GradientClient(ours, timeout=60) as on_threads,
    ):
        on_aio.wait_until_ready(30)
        on_threads.wait_until_ready(30)
        for _ in range(repeats):
            _, w, b = local_seed_loop(
                data.dataset.inputs, data.dataset.targets, data.initial_w, data.initial_b, 1000
            )
            for row, client in ((bare, bare_aio), (bare, bare_threads)):
                seconds = client.seed_steps(batches, data.initial_w, data.initial_b, 0.01)[0]
                (row.ours if client is bare_aio else row.baseline).append(seconds * 1e3)
            for client in (on_aio, on_threads):
                client.set_parameters({"w": data.initial_w, "b": data.initial_b})
                seconds = run_unary(client, batches)
                _, final = client.get_parameters()
                (step.ours if client is on_aio else step.baseline).append(seconds * 1e3)
                step.bitwise.append(torch.equal(final["w"], w) and torch.equal(final["b"], b))
    bare_aio.close()
    bare_threads.close()
    return [bare, step], sizes[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats, 1 s client rounds")
    parser.add_argument("--repeats", type=int, help="default 5, 2 with --quick")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(TORCH_THREADS)
    repeats = args.repeats or (2 if args.quick else 5)
    rounds, duration = (repeats, 1.0) if args.quick else (min(repeats, 3), 2.0)
    started = time.perf_counter()
    with (
        echo_server() as echo,
        aio_echo_server() as aio_echo,
        gradserve_server("linear") as ours,
        aio_gradserve_server() as aio_ours,
    ):
        rows, sizes = seed_rows(
            repeats, aio_echo.address, echo.address, aio_ours.address, ours.address
        )
        rows += concurrency_rows(
            "bare echo",
            ("aio echo", "echo", aio_echo.address),
            ("echo", "echo", echo.address),
            sizes,
            rounds,
            duration,
        )
        rows += concurrency_rows(
            "gradserve ComputeGradients",
            ("aio gradserve", "gradserve", aio_ours.address),
            ("gradserve", "gradserve", ours.address),
            sizes,
            rounds,
            duration,
        )
    print(f"grpc.aio (ours) against the thread-pool server (baseline); {repeats} repeats")
    print(table(rows))
    for row in rows:
        if row.notes:
            print(f"  {row.name}: {row.notes}")
    print(f"total {time.perf_counter() - started:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"rows": [row.to_json() for row in rows], "repeats": repeats}
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
