"""The store's step in process, without gRPC: µs per step against the local loop (issue 18).

    .venv/bin/python bench/store_step.py                 # this tree, 5 repeats, medians
    .venv/bin/python bench/store_step.py --json out.json # every repeat's figures too

Each workload runs 1,000 steps (MLP: 300) from the same initial state; repeats interleave the
workloads so that load from other processes hits them alike. One torch thread, as the bench
servers run. Run it with PYTHONPATH pointing at another tree's package layout to measure that
tree in the same way (bench/README.md, "The store step in process").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.baselines import local_mlp_loop, local_seed_loop
from gradserve.client.data import seed_data
from gradserve.server.config import ModelConfig
from gradserve.server.models.optimizers import build_optimizer
from gradserve.server.models.specs import build_configured
from gradserve.server.store.parameter_store import ParameterStore
from gradserve.types import TrainStep

LEARNING_RATE = 0.01
SEED_STEPS = 1000
MLP_STEPS = 300
PER_REQUEST = 100


def _store(spec: str, optimizer: str) -> ParameterStore:
    model = build_configured(ModelConfig(spec=spec, seed=0))
    return ParameterStore(model, build_optimizer(optimizer, list(model.module.parameters())))


def _seed_batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = seed_data(0)
    inputs, targets = data.dataset.inputs, data.dataset.targets
    starts = [(step * 10) % len(inputs) for step in range(steps)]
    return [(inputs[s : s + 10], targets[s : s + 10]) for s in starts]


def _mlp_batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(64, 784, generator=generator),
            torch.randint(0, 10, (64,), generator=generator),
        )
        for _ in range(steps)
    ]


def train_per_step(
    spec: str, optimizer: str, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> float:
    """µs per step of ParameterStore.train, PER_REQUEST steps per request."""
    store = _store(spec, optimizer)
    steps = [TrainStep.of([batch], learning_rate=LEARNING_RATE) for batch in batches]
    requests = [steps[i : i + PER_REQUEST] for i in range(0, len(steps), PER_REQUEST)]
    started = time.perf_counter()
    for request in requests:
        store.train(request)
    return (time.perf_counter() - started) / len(steps) * 1e6


def unary_per_step(
    spec: str, optimizer: str, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> float:
    """µs per step of compute_gradients + apply_update."""
    store = _store(spec, optimizer)
    started = time.perf_counter()
    for inputs, targets in batches:
        store.compute_gradients(inputs, targets)
        store.apply_update(LEARNING_RATE)
    return (time.perf_counter() - started) / len(batches) * 1e6


def local_seed_per_step(steps: int) -> float:
    data = seed_data(0)
    seconds, _, _ = local_seed_loop(
        data.dataset.inputs, data.dataset.targets, data.initial_w, data.initial_b, steps
    )
    return seconds / steps * 1e6


def local_adam_per_step(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The seed loop with torch.optim.Adam: backward, step, zero_grad (set_to_none)."""
    data = seed_data(0)
    w = data.initial_w.clone().requires_grad_(True)
    b = data.initial_b.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w, b], lr=LEARNING_RATE)
    started = time.perf_counter()
    for inputs, targets in batches:
        ((w * inputs + b - targets) ** 2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - started) / len(batches) * 1e6


def workloads() -> dict[str, Callable[[], float]]:
    seed = _seed_batches(SEED_STEPS)
    mlp = _mlp_batches(MLP_STEPS)
    return {
        "seed local loop": lambda: local_seed_per_step(SEED_STEPS),
        "seed train (100 steps/request)": lambda: train_per_step("linear", "sgd", seed),
        "seed compute_gradients+apply_update": lambda: unary_per_step("linear", "sgd", seed),
        "adam local loop (torch.optim.Adam)": lambda: local_adam_per_step(seed),
        "adam train (100 steps/request)": lambda: train_per_step("linear", "adam", seed),
        "adam compute_gradients+apply_update": lambda: unary_per_step("linear", "adam", seed),
        "mlp 784-256-10 b64 local loop": lambda: (
            local_mlp_loop((784, 256, 10), mlp)[0] / MLP_STEPS * 1e6
        ),
        "mlp 784-256-10 b64 train (100 steps/request)": lambda: train_per_step(
            "mlp:784-256-10", "sgd", mlp
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write every repeat's figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = workloads()
    for run in runs.values():  # warm-up: first calls allocate and fill caches
        run()
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            figures[name].append(run())
    for name, values in figures.items():
        print(
            f"{name:48s} {statistics.median(values):8.1f} µs/step  [{min(values):.1f}-{max(values):.1f}]"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=1)


if __name__ == "__main__":
    main()
