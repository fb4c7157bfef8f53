"""Workload 4: 1, 4 and 8 client processes, each with its own channel, calling ComputeGradients.

Besides calls/s and latency, each client count gets the server's CPU time per call (its
process's utime + stime over the run, divided by the calls it answered), for gradserve and the
bare echo: on 2 shared cores the clients' own CPU competes with the server's, and this row
says which side of the ratio the time is on."""

from __future__ import annotations

import multiprocessing
import os
import queue
import statistics
import time
from typing import Any

from bench.baselines import BareClient
from bench.processes import echo_server, gradserve_server
from bench.rows import Row
from bench.workloads import Settings, seed_batches, unary_sizes
from gradserve.client.gradient_client import NO_RETRY, GradientClient

MAX_CALLS = 200_000  # per client and round: a bound on top of the duration
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _client(
    ours: str,
    bare_target: str,
    sizes: tuple[int, int],
    rounds: int,
    duration: float,
    barrier: Any,
    results: Any,
) -> None:
    """One client process: per round, `duration` seconds on the bare echo, then on gradserve."""

    inputs, targets = seed_batches(1)[0]
    bare = BareClient(bare_target)
    request = bare.request(*sizes)
    with GradientClient(ours, timeout=10, retry=NO_RETRY) as client:
        client.wait_until_ready(60)
        for round_index in range(rounds):
            for kind in ("bare", "ours"):
                barrier.wait(timeout=300)
                latencies: list[float] = []
                errors = 0
                started = time.perf_counter()
                deadline = started + duration
                while time.perf_counter() < deadline and len(latencies) < MAX_CALLS:
                    call_started = time.perf_counter()
                    try:
                        if kind == "bare":
                            bare.call(request, timeout=10)
                        else:
                            client.compute_gradients(inputs, targets)
                    except Exception:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - call_started)
                elapsed = time.perf_counter() - started
                results.put((round_index, kind, latencies, errors, elapsed))
    bare.close()


def clients(settings: Settings) -> list[Row]:
    rounds = 1 if settings.quick else min(settings.repeats, 3)
    duration = 1.0 if settings.quick else 2.0
    rows: list[Row] = []
    context = multiprocessing.get_context("spawn")
    with gradserve_server("linear") as server, echo_server() as echo:
        sizes = unary_sizes(server.address, *seed_batches(1)[0])[0]
        for count in (1, 4, 8):
            pids = (server.pid, echo.pid)
            rows.extend(
                _run(context, count, server.address, echo.address, sizes, rounds, duration, pids)
            )
    return rows


def _run(
    context: Any,
    count: int,
    ours: str,
    bare_target: str,
    sizes: tuple[int, int],
    rounds: int,
    duration: float,
    pids: tuple[int, int] | None = None,
) -> list[Row]:
    """`pids`: the gradserve and echo server processes, for the CPU-per-call row."""
    cpu_before = tuple(cpu_seconds(pid) for pid in pids) if pids else ()
    barrier = context.Barrier(count)
    results = context.Queue()
    processes = [
        context.Process(
            target=_client, args=(ours, bare_target, sizes, rounds, duration, barrier, results)
        )
        for _ in range(count)
    ]
    collected = collect_rounds(processes, results, count * rounds * 2)
    cpu_used = [
        cpu_seconds(pid) - before for pid, before in zip(pids or (), cpu_before, strict=True)
    ]
    name = f"{count} client{'s' if count > 1 else ''}"
    eight = count == 8
    rate = Row(
        "clients",
        f"{name}: ComputeGradients calls/s",
        "calls/s",
        "bare echo, same sizes",
        target="≥ 0.6x bare, 0 errors" if eight else "",
    )
    p50 = Row("clients", f"{name}: p50 latency", "ms", "bare echo p50")
    p99 = Row(
        "clients",
        f"{name}: p99 latency",
        "ms",
        "bare echo p99",
        target="≤ 10 ms" if eight else "",
        check=(lambda ours, ratio: ours <= 10) if eight else None,
    )
    server_cpu = Row("clients", f"{name}: server CPU per call", "µs", "bare echo server")
    calls = {"ours": 0, "bare": 0}
    errors_total = 0
    for round_index in range(rounds):
        figures = {}
        for kind in ("bare", "ours"):
            parts = collected.get((round_index, kind), [])
            latencies = sorted(x for part in parts for x in part[0])
            calls[kind] += len(latencies)
            errors = sum(part[1] for part in parts)
            elapsed = max((part[2] for part in parts), default=0.0)
            if kind == "ours":
                errors_total += errors + (count - len(parts))
            if latencies and elapsed:
                figures[kind] = (
                    len(latencies) / elapsed,
                    statistics.median(latencies) * 1e3,
                    latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3,
                )
        if len(figures) == 2:
            rate.ours.append(figures["ours"][0])
            rate.baseline.append(figures["bare"][0])
            p50.ours.append(figures["ours"][1])
            p50.baseline.append(figures["bare"][1])
            p99.ours.append(figures["ours"][2])
            p99.baseline.append(figures["bare"][2])
    if eight:
        rate.check = lambda ours, ratio: ratio >= 0.6 and errors_total == 0
    rate.notes = f"{errors_total} errors; {rounds} rounds of {duration:g} s per client"
    if cpu_used and calls["ours"] and calls["bare"]:
        # One figure per run: each server is idle while the other is measured.
        server_cpu.ours.append(cpu_used[0] / calls["ours"] * 1e6)
        server_cpu.baseline.append(cpu_used[1] / calls["bare"] * 1e6)
        return [rate, p50, p99, server_cpu]
    return [rate, p50, p99]


Collected = dict[tuple[int, str], list[tuple[list[float], int, float]]]


def collect_rounds(processes: list[Any], results: Any, expected: int) -> Collected:
    """Start the client processes, gather their `expected` (round, label, latencies, errors,
    elapsed) answers from `results`, and join them (terminating any that hang)."""
    for process in processes:
        process.start()
    collected: Collected = {}
    try:
        for _ in range(expected):
            round_index, label, latencies, errors, elapsed = results.get(timeout=300)
            collected.setdefault((round_index, label), []).append((latencies, errors, elapsed))
    except queue.Empty:
        pass
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    return collected
