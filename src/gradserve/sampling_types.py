"""Plain types of sampling (the Sample RPC): what a request asks, what each step answers.

Shared by the client and the server; the engine is server/models/sampling.py, the contract
docs/sampling.md.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class StopReason(enum.Enum):
    STOP_TOKEN = "stop_token"  # noqa: S105 (a stop reason, not a password)
    MAX_TOKENS = "max_tokens"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks for; checked against the server's limits before work."""

    num_samples: int
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0
    prompt_logprobs: bool = False


@dataclass(frozen=True)
class PromptLogprobs:
    """log p(prompt[t] | prompt[:t]) for t >= 1, from one uncached forward of the prompt."""

    logprobs: tuple[float, ...]


@dataclass(frozen=True)
class SampledStep:
    """One decoding step: the token each still-running sample drew, and who stopped."""

    step: int
    samples: tuple[int, ...]
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    finished: tuple[tuple[int, StopReason], ...]


SamplingEvent = PromptLogprobs | SampledStep
# What a Sample stream yields to a client: (the version sampled, one event).
SampleStreamItem = tuple[int, SamplingEvent]


@dataclass
class SampledSequence:
    """One sample, collected: its tokens, their log-probabilities and why it ended."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stop_reason: StopReason | None = None


@dataclass(frozen=True)
class SampleResult:
    """A whole Sample answer: the version sampled, the prompt's log-probabilities, the samples."""

    model_version: int
    prompt_logprobs: tuple[float, ...] | None
    samples: tuple[SampledSequence, ...]


def collect(
    events: Iterable[SamplingEvent], num_samples: int, model_version: int = 0
) -> SampleResult:
    """Gather an engine's or a stream's events into one SampleResult."""
    samples = [SampledSequence() for _ in range(num_samples)]
    prompt: tuple[float, ...] | None = None
    for event in events:
        if isinstance(event, PromptLogprobs):
            prompt = event.logprobs
            continue
        for index, token, logprob in zip(event.samples, event.tokens, event.logprobs, strict=True):
            samples[index].tokens.append(token)
            samples[index].logprobs.append(logprob)
        for index, reason in event.finished:
            samples[index].stop_reason = reason
    return SampleResult(model_version, prompt, tuple(samples))
