"""Workload 6: updates/s with --durability sync against the default, same run, same disk.

Both servers save into a fresh temporary checkpoint directory; the default one also saves
every update (--checkpoint-every-updates 1, in the background), so the row compares "answer
after the fsync" with "fsync later". Clients are threads in this process, each doing
ComputeGradients + ApplyUpdate; with several, group commit lets them share one save.
"""

from __future__ import annotations

import tempfile
import threading
import time

from bench.processes import gradserve_server
from bench.rows import Row
from bench.workloads import Settings, seed_batches
from gradserve.client.gradient_client import NO_RETRY, GradientClient
from gradserve.errors import FailedPreconditionError


def _updates_per_second(address: str, clients: int, duration: float) -> float:
    inputs, targets = seed_batches(1)[0]
    counts = [0] * clients
    start = threading.Barrier(clients + 1)

    def run(index: int) -> None:
        with GradientClient(address, timeout=30, retry=NO_RETRY) as client:
            client.wait_until_ready(60)
            start.wait(timeout=120)
            deadline = time.perf_counter() + duration
            while time.perf_counter() < deadline:
                client.compute_gradients(inputs, targets)
                try:
                    client.apply_update(0.001)
                except FailedPreconditionError:
                    continue  # another client's update took these gradients
                counts[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait(timeout=120)
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def durability(settings: Settings) -> list[Row]:
    duration = 1.0 if settings.quick else 2.0
    rows = {
        count: Row(
            "durability",
            f"updates/s, {count} client{'s' if count > 1 else ''}, --durability sync",
            "updates/s",
            "default (async, saved every update)",
            notes="ours / baseline is the price of answering after the fsync",
        )
        for count in (1, 4)
    }
    with tempfile.TemporaryDirectory() as durable, tempfile.TemporaryDirectory() as default:
        sync_args = ("--checkpoint-dir", durable, "--durability", "sync")
        async_args = ("--checkpoint-dir", default, "--checkpoint-every-updates", "1")
        with (
            gradserve_server("linear", *sync_args) as ours,
            gradserve_server("linear", *async_args) as baseline,
        ):
            for _ in range(settings.repeats):
                for count, row in rows.items():
                    row.ours.append(_updates_per_second(ours.address, count, duration))
                    row.baseline.append(_updates_per_second(baseline.address, count, duration))
    return list(rows.values())
