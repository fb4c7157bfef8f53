"""The store's step with other work between steps: why it costs 2-3x more in the server (issue 18).

    .venv/bin/python bench/cold_step.py               # 3 repeats, medians, ~40 s
    .venv/bin/python bench/cold_step.py --repeats 5 --steps 3000

bench/store_step.py times steps back to back, with every cache warm. In the server, between
two of our steps, the thread blocks for the next call and gRPC's own code (and the client, on
the same 2 cores) runs: caches and branch predictors then hold gRPC's working set, not ours.
This times the same steps (thread CPU of the step alone) with nothing, a 100 µs sleep, or two
bare gRPC round trips to bench/echo_server.py between steps. Findings: bench/README.md, "Why
the store costs more over the wire".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.baselines import BareClient
from bench.processes import ServerProcess
from bench.store_step import LEARNING_RATE, _seed_batches, _store

STEPS = 1500
# ComputeGradients' request and response sizes for a seed batch (bench/workloads.unary_sizes).
CALL_SIZES = (134, 15)
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def store_steps(batches: Batches, between: Callable[[], object], request_ids: bool) -> float:
    """µs of thread CPU per compute_gradients + apply_update, `between()` before each step."""
    store = _store("linear", "sgd")
    total = 0
    for index, (inputs, targets) in enumerate(batches):
        between()
        started = time.thread_time_ns()
        if request_ids:
            store.compute_gradients(inputs, targets, request_id=f"c{index}")
            store.apply_update(LEARNING_RATE, request_id=f"u{index}")
        else:
            store.compute_gradients(inputs, targets)
            store.apply_update(LEARNING_RATE)
        total += time.thread_time_ns() - started
    return total / len(batches) / 1e3


def local_steps(batches: Batches, between: Callable[[], object]) -> float:
    """The seed tutorial's step (the bare prototype's arithmetic), timed the same way."""
    w = torch.zeros(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    total = 0
    for inputs, targets in batches:
        between()
        started = time.thread_time_ns()
        ((w * inputs + b - targets) ** 2).mean().backward()
        with torch.no_grad():
            w -= LEARNING_RATE * w.grad  # type: ignore[operator]
            b -= LEARNING_RATE * b.grad  # type: ignore[operator]
        w.grad.zero_()  # type: ignore[union-attr]
        b.grad.zero_()  # type: ignore[union-attr]
        total += time.thread_time_ns() - started
    return total / len(batches) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=STEPS, help="per workload and repeat")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = _seed_batches(max(1, args.steps))
    with ServerProcess("bench/echo_server.py") as echo:
        bare = BareClient(echo.address)
        request = bare.request(*CALL_SIZES)
        betweens: dict[str, Callable[[], object]] = {
            "nothing": lambda: None,
            "100 µs sleep": lambda: time.sleep(1e-4),
            "2 gRPC calls": lambda: (bare.call(request), bare.call(request)),
        }
        workloads: dict[str, Callable[[Callable[[], object]], float]] = {
            "store, request ids": lambda between: store_steps(batches, between, True),
            "store, no request ids": lambda between: store_steps(batches, between, False),
            "local loop": lambda between: local_steps(batches, between),
        }
        figures: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):  # interleaved, so that outside load hits all alike
            for between_name, between in betweens.items():
                for name, workload in workloads.items():
                    figures.setdefault((name, between_name), []).append(workload(between))
        bare.close()
    print(f"{'µs per step (thread CPU)':24s}" + "".join(f"{b:>16s}" for b in betweens))
    for name in workloads:
        cells = (statistics.median(figures[(name, b)]) for b in betweens)
        print(f"{name:24s}" + "".join(f"{cell:16.0f}" for cell in cells))


if __name__ == "__main__":
    main()
