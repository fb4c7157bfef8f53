"""Workload 7: tokens/s of Sample over gRPC against the same generation in process, and the
time to the first token.

The server (its own process, one torch thread) serves bench/sample_model.py's random Llama;
the local side loads the server's weights (GetParameters) into the same model and runs the
same engine (server/models/sampling.py) with the same request, so both compute the same
tokens: each repeat checks them equal (`bitwise`). Seeded sampling at temperature 1, no stop
token, so every sample runs max_tokens. Goal (issue 26): tokens/s ≥ 0.9x local.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from transformers import AutoModelForCausalLM

from bench.processes import gradserve_server
from bench.rows import Row
from bench.sample_model import config
from bench.workloads import Settings
from gradserve.client.gradient_client import NO_RETRY, GradientClient
from gradserve.sampling_types import (
    SampledStep,
    SampleStreamItem,
    SamplingEvent,
    SamplingParams,
    collect,
)
from gradserve.server.models.sampling import sample

PROMPT = list(range(1, 17))
FACTORY = "benchlm=bench.sample_model:build"


def _timed(
    events: Iterable[SamplingEvent | SampleStreamItem], num_samples: int
) -> tuple[float, float, list[list[int]]]:
    """(seconds to the first token, seconds in all, tokens per sample) of the engine's events
    or of a stream's (version, event) pairs."""
    started = time.perf_counter()
    first = 0.0
    steps: list[SamplingEvent] = []
    for item in events:
        event = item[1] if isinstance(item, tuple) else item
        if isinstance(event, SampledStep) and not first:
            first = time.perf_counter() - started
        steps.append(event)
    total = time.perf_counter() - started
    return first, total, [s.tokens for s in collect(steps, num_samples).samples]


def sampling(settings: Settings) -> list[Row]:
    max_tokens = 32 if settings.quick else 128
    params = SamplingParams(num_samples=8, max_tokens=max_tokens, temperature=1.0, seed=3)
    tokens = params.num_samples * params.max_tokens
    speed = Row(
        "sampling",
        f"Sample tokens/s, {params.num_samples} samples x {max_tokens} tokens, 4-layer Llama",
        "tokens/s",
        "same engine in process",
        target=">= 0.9x",
        check=lambda _ours, ratio: ratio >= 0.9,
    )
    first = Row(
        "sampling",
        "Sample time to first token (16-token prompt)",
        "ms",
        "same engine in process",
        notes="over gRPC: call set-up, the weights' copy, prefill and one message",
    )
    torch.manual_seed(0)
    with (
        gradserve_server("benchlm", "--model-factory", FACTORY) as server,
        GradientClient(server.address, timeout=300, retry=NO_RETRY) as client,
    ):
        client.wait_until_ready(60)
        local = AutoModelForCausalLM.from_config(config()).eval()
        _, values = client.get_parameters()
        local.load_state_dict(values, strict=False)
        # Warm both paths with the request itself: the first runs of new shapes are slower
        # (measured here: the in-process loop's first runs 30-50 % below its later ones).
        for _ in range(2):
            client.sample(PROMPT, params)
            list(sample(local, PROMPT, params))
        for repeat in range(settings.repeats):
            # Alternating which goes first, so a load that rises or falls favours neither.
            if repeat % 2:
                here = _timed(sample(local, PROMPT, params), params.num_samples)
                remote = _timed(client.sample_stream(PROMPT, params), params.num_samples)
            else:
                remote = _timed(client.sample_stream(PROMPT, params), params.num_samples)
                here = _timed(sample(local, PROMPT, params), params.num_samples)
            speed.ours.append(tokens / remote[1])
            speed.baseline.append(tokens / here[1])
            first.ours.append(remote[0] * 1000)
            first.baseline.append(here[0] * 1000)
            speed.bitwise.append(remote[2] == here[2])
    return [speed, first]
