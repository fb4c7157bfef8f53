"""Sampling tokens from a causal language model: one request's samples batched over a KV cache.

The loop is written out (docs/sampling.md gives the local equivalent, step by step) so that
its draws are the documented ones: one prefill of the prompt repeated `num_samples` times,
then one forward of the last tokens per step with HF's `past_key_values`. Greedy
(temperature 0) is bitwise `model.generate(do_sample=False)`; seeded sampling is bitwise the
local loop: logits in float32, divided by the temperature, top-k then top-p filtered as HF's
warpers do, softmax, one `torch.multinomial(probs, 1, generator=g)` over all rows per step
from `torch.Generator().manual_seed(seed)`. Rows that stopped keep being fed (their stop
token) so the batch keeps its shape, as `generate` does, and their draws are discarded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from gradserve.sampling_types import (
    PromptLogprobs,
    SampledStep,
    SamplingEvent,
    SamplingParams,
    StopReason,
)

# A context entered around each forward: an adapter's `applied` (server/models/lora.py).
ForwardContext = Callable[[], contextlib.AbstractContextManager[Any]]


def filtered_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """float32 [N, V] logits -> the logits of the distribution drawn from (-inf outside it):
    temperature, then top-k, then top-p, each as transformers' warper of the same name."""
    scores = logits / params.temperature
    if 0 < params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if params.top_p < 1.0:
        sorted_scores, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - params.top_p)
        remove_sorted[..., -1:] = False  # the most likely token always stays
        remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
        scores = scores.masked_fill(remove, -float("inf"))
    return scores


def causal_lm_of(module: nn.Module) -> tuple[nn.Module, ForwardContext] | None:
    """(the model to call, the context around each call) for a run's module that is a causal
    language model (transformers' forward and config) or an adapter over one (lora.py:
    its base, with `applied`); None for any other module."""
    base = getattr(module, "base", None)
    applied = getattr(module, "applied", None)
    if isinstance(base, nn.Module) and callable(applied) and _is_causal_lm(base):
        return base, applied
    if _is_causal_lm(module):
        return module, contextlib.nullcontext
    return None


def _is_causal_lm(module: nn.Module) -> bool:
    return hasattr(module, "config") and callable(getattr(module, "get_output_embeddings", None))


def _forward(model: nn.Module, context: ForwardContext, **inputs: Any) -> tuple[torch.Tensor, Any]:
    with context(), torch.no_grad():
        outputs = model(**inputs, use_cache="past_key_values" in inputs, return_dict=True)
    return outputs.logits, outputs.past_key_values


def prompt_logprobs(
    model: nn.Module, prompt: torch.Tensor, context: ForwardContext = contextlib.nullcontext
) -> torch.Tensor:
    """Per-token log-probabilities of a [1, P] prompt, from one uncached forward: [P - 1]."""
    logits, _ = _forward(model, context, input_ids=prompt)
    logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    return logprobs.gather(-1, prompt[0, 1:, None]).squeeze(-1)


def sample(
    model: nn.Module,
    prompt: Sequence[int],
    params: SamplingParams,
    *,
    context: ForwardContext = contextlib.nullcontext,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[SamplingEvent]:
    """Generate `params.num_samples` continuations of `prompt`, yielding each step's tokens.

    A token's log-probability is under the distribution it was drawn from (the filtered one);
    greedy answers the model's own log-probability (temperature 1, unfiltered). `cancelled` is
    checked before each forward; once it answers True the running samples stop (CANCELLED)."""
    device = next(model.parameters()).device
    prompt_ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    if params.prompt_logprobs:
        yield PromptLogprobs(tuple(prompt_logprobs(model, prompt_ids, context).tolist()))
    generator = torch.Generator(device=device).manual_seed(params.seed)
    stop_ids = torch.tensor(params.stop_token_ids, dtype=torch.long, device=device)
    rows = params.num_samples
    input_ids = prompt_ids.expand(rows, -1)
    attention_mask = torch.ones_like(input_ids)
    running = torch.ones(rows, dtype=torch.bool, device=device)
    past: Any = None
    for step in range(params.max_tokens):
        if cancelled():
            yield _stopped_all(step, running, StopReason.CANCELLED)
            return
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        inputs["past_key_values"] = past
        # Only the last position's logits, as generate asks for (its prefill computes no more).
        if _keeps_logits(model):
            inputs["logits_to_keep"] = 1
        logits, past = _forward(model, context, **inputs)
        last = logits[:, -1].to(copy=True, dtype=torch.float32)
        tokens, logprobs = _draw(last, params, generator)
        stopped = torch.isin(tokens, stop_ids) & running
        out_of_tokens = step + 1 == params.max_tokens
        finished = [(int(i), StopReason.STOP_TOKEN) for i in stopped.nonzero().flatten()]
        if out_of_tokens:
            ended = (running & ~stopped).nonzero().flatten()
            finished += [(int(i), StopReason.MAX_TOKENS) for i in ended]
        samples = running.nonzero().flatten()
        yield SampledStep(
            step=step,
            samples=tuple(samples.tolist()),
            tokens=tuple(tokens[samples].tolist()),
            logprobs=tuple(logprobs[samples].tolist()),
            finished=tuple(sorted(finished)),
        )
        running &= ~stopped
        if not bool(running.any()):
            return
        # Stopped rows are fed their stop token, as generate feeds them its pad token.
        input_ids = tokens[:, None]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(rows, 1)], dim=1)


def _draw(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [N], their log-probabilities [N]) from float32 logits [N, V]."""
    if params.temperature == 0:
        tokens = torch.argmax(logits, dim=-1)
        logprobs = torch.log_softmax(logits, dim=-1)
    else:
        scores = filtered_logits(logits, params)
        probs = torch.softmax(scores, dim=-1)
        tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        logprobs = torch.log_softmax(scores, dim=-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def _stopped_all(step: int, running: torch.Tensor, reason: StopReason) -> SampledStep:
    ended = tuple(running.nonzero().flatten().tolist())
    return SampledStep(step, (), (), (), tuple((i, reason) for i in ended))


def _keeps_logits(model: nn.Module) -> bool:
    checker = getattr(model, "_supports_logits_to_keep", None)
    return bool(checker()) if callable(checker) else False
