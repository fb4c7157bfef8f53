"""Train a tiny random language model to sort digits by RL, all through gradserve's client.

    python train_rl.py                        # an embedded server on a free loopback port
    python train_rl.py --server HOST:PORT --base digits   # a server run with --base-model digits=DIR
    python train_rl.py --write-base DIR       # write the random base folder, for such a server

Each step prints its mean reward, sets the `gradserve_rl_mean_reward` gauge (served on
--metrics-port when given) and, with --plot, the curve is drawn at the end (docs/rl.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from rl_loop import RlSettings, sample_groups, training_step
from sort_digits import make_prompts, write_base

from gradserve.client.gradient_client import GradientClient
from gradserve.run_types import LoraRequest
from gradserve.server.app import create_server
from gradserve.server.config import ModelConfig, NetworkConfig, RuntimeConfig, ServerConfig

BASE = "digits"
RUN = "rl-sort"
# Steps a moving mean of the reward spans: one step's mean of 64 samples is noisy.
WINDOW = 10
# Every linear layer, the output layer too: over a random base, the adapter is the policy.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


@contextmanager
def connected(server: str | None, base_seed: int) -> Iterator[GradientClient]:
    """A client to `server`, or to an embedded one serving a fresh random base."""
    if server is not None:
        with GradientClient(server, timeout=60.0) as client:
            yield client
        return
    with tempfile.TemporaryDirectory() as folder:
        base = write_base(Path(folder) / BASE, base_seed)
        config = ServerConfig(
            network=NetworkConfig(port=0, metrics_port=0),
            model=ModelConfig(base_models=(f"{BASE}={base}",)),
            runtime=RuntimeConfig(shutdown_grace_seconds=1.0),
        )
        running = create_server(config)
        try:
            with GradientClient(running.address, timeout=60.0) as client:
                yield client
        finally:
            running.stop(1.0)


def train(
    client: GradientClient,
    settings: RlSettings,
    base: str = BASE,
    on_step: Gauge | None = None,
) -> list[float]:
    """Create the adapter run, train it `settings.steps` steps; the mean reward of each."""
    client.create_run(
        RUN,
        base_model=base,
        lora=LoraRequest(
            rank=settings.lora_rank, alpha=2.0 * settings.lora_rank, target_modules=TARGETS
        ),
        optimizer="adam",
        seed=settings.seed,
    )
    run = client.for_run(RUN)
    prompts_from = torch.Generator().manual_seed(settings.seed)
    rewards = []
    for step in range(settings.steps):
        prompts = make_prompts(settings.prompts_per_step, settings.digits_per_prompt, prompts_from)
        groups = sample_groups(run, prompts, settings, step)
        train_step, mean_reward = training_step(prompts, groups, settings)
        for _ in run.train_stream([[train_step]]):
            pass
        rewards.append(mean_reward)
        if on_step is not None:
            on_step.set(mean_reward)
        print(f"step {step:4d}  mean reward {mean_reward:.3f}", flush=True)
    return rewards


def moving_mean(rewards: Sequence[float], window: int = WINDOW) -> list[float]:
    """The mean of each step's last `window` rewards (fewer at the start)."""
    return [
        sum(rewards[max(0, i + 1 - window) : i + 1]) / (i + 1 - max(0, i + 1 - window))
        for i in range(len(rewards))
    ]


def first_step_reaching(rewards: Sequence[float], target: float) -> int | None:
    """The first step whose moving mean is at least `target`; None if none is."""
    return next((i for i, mean in enumerate(moving_mean(rewards)) if mean >= target), None)


def plot(rewards: Sequence[float], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.8))
    axes.plot(range(len(rewards)), rewards, color="lightsteelblue", label="mean reward per step")
    axes.plot(moving_mean(rewards), color="navy", label=f"mean of the last {WINDOW} steps")
    axes.axhline(target, linestyle="--", color="grey", label=f"target {target}")
    axes.set_xlabel("step")
    axes.set_ylabel("mean reward")
    axes.set_ylim(0, 1)
    axes.legend(loc="lower right")
    axes.set_title("Sorting digits by RL over gradserve (Sample + importance_sampling)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="HOST:PORT; none: an embedded server")
    parser.add_argument("--base", default=BASE, help="the server's --base-model name")
    parser.add_argument("--write-base", type=Path, help="write the random base here and stop")
    parser.add_argument("--steps", type=int, default=RlSettings.steps)
    parser.add_argument("--seed", type=int, default=RlSettings.seed)
    parser.add_argument("--loss", choices=("importance_sampling", "ppo"), default=RlSettings.loss)
    parser.add_argument("--metrics-port", type=int, default=0, help="serve the gauge; 0: off")
    parser.add_argument("--plot", type=Path, help="draw the reward curve to this PNG")
    parser.add_argument(
        "--target", type=float, default=0.5, help=f"the mean reward over {WINDOW} steps to reach"
    )
    args = parser.parse_args(argv)
    if args.write_base is not None:
        write_base(args.write_base, args.seed)
        return 0
    settings = RlSettings(steps=args.steps, seed=args.seed, loss=args.loss)
    registry = CollectorRegistry()
    gauge = Gauge(
        "gradserve_rl_mean_reward", "Mean reward of the last RL step.", registry=registry
    )
    if args.metrics_port:
        start_http_server(args.metrics_port, addr="127.0.0.1", registry=registry)
    if settings.steps < 1:
        parser.error("--steps: at least 1")
    with connected(args.server, args.seed) as client:
        rewards = train(client, settings, args.base, gauge)
    reached = first_step_reaching(rewards, args.target)
    means = moving_mean(rewards)
    first = min(WINDOW, len(means))
    print(
        f"start {means[first - 1]:.3f} (mean of the first {first} steps), "
        f"end {means[-1]:.3f}; target {args.target} "
        + (f"reached at step {reached}" if reached is not None else "not reached")
    )
    if args.plot is not None:
        plot(rewards, args.plot, args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
