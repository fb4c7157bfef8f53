"""One RL step through gradserve's Python client: sample groups, score, step on the advantages.

For each prompt, `Sample` draws a group of completions (temperature 1, so each token's
log-probability is the policy's own); each completion's advantage is its reward minus the
group's mean, over the group's standard deviation (GRPO's group normalisation), divided by
the number of completions (the losses are sums; normalising is the client's). One Train step
then runs `importance_sampling` (or `ppo`) over prompt + completion, advantages on the
completion's tokens only, and applies the update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sort_digits import reward

from gradserve.client.gradient_client import GradientClient, TrainStep
from gradserve.sampling_types import SampleResult, SamplingParams
from gradserve.token_types import TokenBatchLoss
from gradserve.types import LossSpec


@dataclass(frozen=True)
class RlSettings:
    """How the example trains; the defaults are those of docs/rl.md's figure."""

    steps: int = 400
    prompts_per_step: int = 8
    group_size: int = 8
    digits_per_prompt: int = 3
    learning_rate: float = 0.001
    lora_rank: int = 8
    seed: int = 0
    loss: str = "importance_sampling"


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """[prompts, group] rewards -> advantages: centred and scaled within each group (a group
    whose rewards are all equal teaches nothing: its advantages are 0)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    spread = rewards.std(dim=1, keepdim=True, unbiased=False)
    return torch.where(spread > 0, centred / spread.clamp_min(1e-6), torch.zeros_like(centred))


def sample_groups(
    client: GradientClient, prompts: Sequence[list[int]], settings: RlSettings, step: int
) -> list[SampleResult]:
    """One Sample call per prompt, each seeded from (seed, step, prompt) so runs repeat."""
    results = []
    for index, prompt in enumerate(prompts):
        params = SamplingParams(
            num_samples=settings.group_size,
            max_tokens=settings.digits_per_prompt,
            temperature=1.0,
            seed=(settings.seed * 1_000_003 + step) * 1_009 + index,
        )
        results.append(client.sample(prompt, params))
    return results


def training_step(
    prompts: Sequence[list[int]], groups: Sequence[SampleResult], settings: RlSettings
) -> tuple[TrainStep, float]:
    """The Train step for these groups, and their mean reward."""
    rewards = torch.tensor(
        [[reward(p, s.tokens) for s in g.samples] for p, g in zip(prompts, groups, strict=True)]
    )
    advantages = group_advantages(rewards) / rewards.numel()
    sequences, logprobs, credits = [], [], []
    for prompt, group, group_advantage in zip(prompts, groups, advantages, strict=True):
        for sample, advantage in zip(group.samples, group_advantage.tolist(), strict=True):
            sequences.append(prompt + sample.tokens)
            # Targets are sequence[1:]: the prompt's own positions carry no credit.
            logprobs.append([0.0] * (len(prompt) - 1) + sample.logprobs)
            credits.append([0.0] * (len(prompt) - 1) + [advantage] * len(sample.tokens))
    tokens = torch.tensor(sequences)
    batch_loss = TokenBatchLoss(
        loss=LossSpec(settings.loss),
        logprobs=torch.tensor(logprobs, dtype=torch.float32),
        advantages=torch.tensor(credits, dtype=torch.float32),
    )
    step = TrainStep(
        batches=((tokens[:, :-1], tokens[:, 1:]),),
        batch_losses=(batch_loss,),
        apply_update=True,
        learning_rate=settings.learning_rate,
    )
    return step, rewards.mean().item()
