"""Workload "replicas": 8 client processes on 4 runs, against `--replicas 2` (two server
processes behind nginx) and against one server process, in alternating rounds.

Each client is bound to one run (2 clients per run) and calls ComputeGradients on a seed batch
for the round's duration; the 4 run names are chosen so that the ring puts 2 on each replica.
Rows: calls/s and p99, the two processes behind the proxy against the one process (ratio above
1 on calls/s: the set serves more). The notes give the server side's CPU per call (replicas +
nginx, from /proc) for both, which says where the second process's time goes on 2 cores.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

from bench.concurrency import collect_rounds, cpu_seconds
from bench.processes import gradserve_server
from bench.rows import Row
from bench.workloads import Settings, seed_batches
from gradserve.client.gradient_client import NO_RETRY, GradientClient
from gradserve.server.replicas.placement import replica_for

CLIENTS = 8
RUNS = 4
REPLICAS = 2
KINDS = ("one process", "2 processes behind nginx")
MAX_CALLS = 200_000  # per client and round: a bound on top of the duration


def run_names() -> list[str]:
    """RUNS names, RUNS // REPLICAS on each replica of the ring."""
    names: list[str] = []
    for index in range(1000):
        name = f"bench-{index}"
        if (
            sum(replica_for(n, REPLICAS) == replica_for(name, REPLICAS) for n in names)
            < RUNS // REPLICAS
        ):
            names.append(name)
        if len(names) == RUNS:
            return names
    raise AssertionError("the ring left a replica without runs")


def _client(
    targets: tuple[str, str], run: str, rounds: int, duration: float, barrier: Any, results: Any
) -> None:
    inputs, targets_batch = seed_batches(1)[0]
    clients = [GradientClient(t, timeout=10, retry=NO_RETRY, run=run) for t in targets]
    for client in clients:
        client.wait_until_ready(60)
    for round_index in range(rounds):
        for kind, client in zip(KINDS, clients, strict=True):
            barrier.wait(timeout=300)
            latencies: list[float] = []
            errors = 0
            started = time.perf_counter()
            deadline = started + duration
            while time.perf_counter() < deadline and len(latencies) < MAX_CALLS:
                call_started = time.perf_counter()
                try:
                    client.compute_gradients(inputs, targets_batch)
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - call_started)
            results.put((round_index, kind, latencies, errors, time.perf_counter() - started))
    for client in clients:
        client.close()


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and every process below it (replicas, nginx and its worker)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rpartition(")")[2].split()[1]
                )
            except OSError:
                continue
    tree, frontier = {pid}, {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        tree |= frontier
    total = 0.0
    for member in tree:
        try:
            total += cpu_seconds(member)
        except OSError:
            continue  # exited since the scan
    return total


def replicas(settings: Settings) -> list[Row]:
    rounds = 1 if settings.quick else min(settings.repeats, 3)
    duration = 1.0 if settings.quick else 2.0
    names = run_names()
    context = multiprocessing.get_context("spawn")
    with (
        gradserve_server("linear") as single,
        gradserve_server("linear", "--replicas", "2") as pair,
    ):
        for address in (single.address, pair.address):
            with GradientClient(address, timeout=30) as client:
                for name in names:
                    client.create_run(name, model="linear")
        servers = (single.pid, pair.pid)
        cpu_before = [tree_cpu_seconds(pid) for pid in servers]
        barrier = context.Barrier(CLIENTS)
        results = context.Queue()
        processes = [
            context.Process(
                target=_client,
                args=(
                    (single.address, pair.address),
                    names[i % RUNS],
                    rounds,
                    duration,
                    barrier,
                    results,
                ),
            )
            for i in range(CLIENTS)
        ]
        collected = collect_rounds(processes, results, CLIENTS * rounds * len(KINDS))
        cpu_used = [
            tree_cpu_seconds(pid) - before for pid, before in zip(servers, cpu_before, strict=True)
        ]
    return _rows(collected, rounds, duration, cpu_used)


def _rows(
    collected: dict[tuple[int, str], list[tuple[list[float], int, float]]],
    rounds: int,
    duration: float,
    cpu_used: list[float],
) -> list[Row]:
    name = f"{CLIENTS} clients on {RUNS} runs, 2 processes behind nginx"
    rate = Row("replicas", f"{name}: ComputeGradients calls/s", "calls/s", "one process")
    p99 = Row("replicas", f"{name}: p99 latency", "ms", "one process p99")
    calls = dict.fromkeys(KINDS, 0)
    errors = dict.fromkeys(KINDS, 0)
    for round_index in range(rounds):
        figures = {}
        for kind in KINDS:
            parts = collected.get((round_index, kind), [])
            latencies = sorted(x for part in parts for x in part[0])
            calls[kind] += len(latencies)
            errors[kind] += sum(part[1] for part in parts) + (CLIENTS - len(parts))
            elapsed = max((part[2] for part in parts), default=0.0)
            if latencies and elapsed:
                figures[kind] = (
                    len(latencies) / elapsed,
                    latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3,
                )
        if len(figures) == len(KINDS):
            ours, baseline = figures[KINDS[1]], figures[KINDS[0]]
            rate.ours.append(ours[0])
            rate.baseline.append(baseline[0])
            p99.ours.append(ours[1])
            p99.baseline.append(baseline[1])
    cpu = ", ".join(
        f"{kind} {used / calls[kind] * 1e6:,.0f} µs"
        for kind, used in zip(KINDS, cpu_used, strict=True)
        if calls[kind]
    )
    rate.notes = (
        f"errors: {errors[KINDS[1]]} behind nginx, {errors[KINDS[0]]} on one process; "
        f"{rounds} rounds of {duration:g} s per client; server-side CPU per call: {cpu}"
    )
    return [rate, p99]
