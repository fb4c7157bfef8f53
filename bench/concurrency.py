"""Workload 4: 1, 4 and 8 client processes, each with its own channel, calling ComputeGradients."""

from __future__ import annotations

import multiprocessing
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
            rows.extend(_run(context, count, server.address, echo.address, sizes, rounds, duration))
    return rows


def _run(
    context: Any,
    count: int,
    ours: str,
    bare_target: str,
    sizes: tuple[int, int],
    rounds: int,
    duration: float,
) -> list[Row]:
    barrier = context.Barrier(count)
    results = context.Queue()
    processes = [
        context.Process(
            target=_client, args=(ours, bare_target, sizes, rounds, duration, barrier, results)
        )
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    collected: dict[tuple[int, str], list[tuple[list[float], int, float]]] = {}
    try:
        for _ in range(count * rounds * 2):
            round_index, kind, latencies, errors, elapsed = results.get(timeout=300)
            collected.setdefault((round_index, kind), []).append((latencies, errors, elapsed))
    except queue.Empty:
        pass
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    name = f"{count} client{'s' if count > 1 else ''}"
    eight = count == 8
    rate = Row(
        "clients",
        f"{name}: ComputeGradients calls/s",
        "calls/s",
        "bare echo, same sizes",
        target="≥ 2000/s, 0 errors" if eight else "",
    )
    p50 = Row("clients", f"{name}: p50 latency", "ms", "bare echo p50")
    p99 = Row(
        "clients",
        f"{name}: p99 latency",
        "ms",
        "bare echo p99",
        target="≤ 20 ms" if eight else "",
        check=(lambda ours, ratio: ours <= 20) if eight else None,
    )
    errors_total = 0
    for round_index in range(rounds):
        figures = {}
        for kind in ("bare", "ours"):
            parts = collected.get((round_index, kind), [])
            latencies = sorted(x for part in parts for x in part[0])
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
        rate.check = lambda ours, ratio: ours >= 2000 and errors_total == 0
    rate.notes = f"{errors_total} errors; {rounds} rounds of {duration:g} s per client"
    return [rate, p50, p99]
