"""examples/rl/ learns: the first 120 steps of docs/rl.md's run raise the mean reward from
its random start to the stated target, deterministically (every draw is seeded)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry, Gauge

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rl"
sys.path.insert(0, str(EXAMPLE))

import train_rl  # noqa: E402
from rl_loop import RlSettings, group_advantages  # noqa: E402
from sort_digits import BOS, SEP, reward  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)
# docs/rl.md: the mean of 10 steps starts near 1/12 (a uniform policy over 12 tokens) and
# passes 0.2 near step 80 of the default settings; the test allows 120.
START_AT_MOST = 0.12
TARGET = 0.2
STEPS = 120


def test_the_reward_is_the_fraction_of_sorted_positions() -> None:
    assert reward([BOS, 3, 1, 2, SEP], [1, 2, 3]) == 1.0
    assert reward([BOS, 3, 1, 2, SEP], [1, 3, 2]) == pytest.approx(1 / 3)
    assert reward([BOS, 3, 1, 2, SEP], [SEP, SEP, SEP]) == 0.0


def test_advantages_are_normalised_within_each_group() -> None:
    advantages = group_advantages(torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]]))
    assert advantages.tolist() == [[-1.0, 1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]]


def test_the_reward_rises_from_its_start_to_the_target(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("gradserve_rl_mean_reward", "Mean reward of the last RL step.", registry=registry)
    settings = RlSettings(steps=STEPS)
    with train_rl.connected(None, settings.seed) as client:
        rewards = train_rl.train(client, settings, on_step=gauge)
    means = train_rl.moving_mean(rewards)
    assert means[train_rl.WINDOW - 1] <= START_AT_MOST
    reached = train_rl.first_step_reaching(rewards, TARGET)
    assert reached is not None and reached < STEPS, max(means)
    assert registry.get_sample_value("gradserve_rl_mean_reward") == rewards[-1]
    train_rl.plot(rewards, tmp_path / "reward.png", TARGET)
    assert (tmp_path / "reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
