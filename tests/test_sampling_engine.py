"""The sampling engine against local torch: greedy bitwise generate, seeded bitwise the docs' loop."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sampling_factories import llama_config
from transformers import AutoModelForCausalLM, GPT2Config

from gradserve.sampling_types import PromptLogprobs, SampledStep, SamplingParams, StopReason
from gradserve.server.models.sampling import filtered_logits, sample

VOCAB = 61
PROMPT = [5, 7, 9, 11, 3, 4]
# The models' end-of-sequence token, the stop token of the greedy comparison.
EOS = 2


def tiny_model(kind: str, folder: Path) -> torch.nn.Module:
    """A random 2-layer causal LM saved into `folder` and loaded back (nothing downloaded)."""
    if kind == "llama":
        config: Any = llama_config()
    else:
        config = GPT2Config(
            vocab_size=VOCAB,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            initializer_range=0.3,
            bos_token_id=0,
            eos_token_id=EOS,
        )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()


@pytest.fixture(params=["llama", "gpt2"])
def model(request: pytest.FixtureRequest, tmp_path: Path) -> torch.nn.Module:
    return tiny_model(request.param, tmp_path / request.param)


def collect(
    events: Iterator[Any], rows: int
) -> tuple[list[list[int]], list[list[float]], dict[int, StopReason]]:
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    reasons: dict[int, StopReason] = {}
    for event in events:
        assert isinstance(event, SampledStep)
        for index, token, logprob in zip(event.samples, event.tokens, event.logprobs):
            tokens[index].append(token)
            logprobs[index].append(logprob)
        reasons.update(event.finished)
    return tokens, logprobs, reasons


def test_greedy_is_bitwise_generate(model: torch.nn.Module) -> None:
    params = SamplingParams(num_samples=2, max_tokens=12, temperature=0.0, stop_token_ids=(EOS,))
    tokens, logprobs, reasons = collect(sample(model, PROMPT, params), 2)
    prompt = torch.tensor([PROMPT] * 2)
    reference = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=12,
        output_logits=True,
        return_dict_in_generate=True,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    assert tokens == reference.sequences[:, len(PROMPT) :].tolist()
    expected = [
        torch.log_softmax(step_logits.float(), dim=-1)[0, token].item()
        for step_logits, token in zip(reference.logits, tokens[0])
    ]
    assert logprobs[0] == expected  # bitwise: the same logits, the same float32 arithmetic
    reason = StopReason.STOP_TOKEN if tokens[0][-1] == EOS else StopReason.MAX_TOKENS
    assert reasons == {0: reason, 1: reason}


def local_sampling_loop(
    model: torch.nn.Module, prompt: list[int], params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/sampling.md's loop, written out: tokens [N, max_tokens] and their log-probabilities."""
    generator = torch.Generator().manual_seed(params.seed)
    input_ids = torch.tensor([prompt] * params.num_samples)
    mask = torch.ones_like(input_ids)
    past = None
    tokens, logprobs = [], []
    for _ in range(params.max_tokens):
        with torch.no_grad():
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                past_key_values=past,
                use_cache=True,
                logits_to_keep=1,
            )
        past = out.past_key_values
        scores = filtered_logits(out.logits[:, -1].float(), params)
        token = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)
        tokens.append(token[:, 0])
        logprobs.append(torch.log_softmax(scores, -1).gather(-1, token)[:, 0])
        input_ids = token
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
    return torch.stack(tokens, 1), torch.stack(logprobs, 1)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 10, 1.0), (1.3, 0, 0.8)]
)
def test_seeded_sampling_is_bitwise_the_documented_loop(
    model: torch.nn.Module, temperature: float, top_k: int, top_p: float
) -> None:
    params = SamplingParams(
        num_samples=4, max_tokens=10, temperature=temperature, top_k=top_k, top_p=top_p, seed=7
    )
    tokens, logprobs, _ = collect(sample(model, PROMPT, params), 4)
    expected_tokens, expected_logprobs = local_sampling_loop(model, PROMPT, params)
    assert tokens == expected_tokens.tolist()
    assert logprobs == expected_logprobs.tolist()
    again, _, _ = collect(sample(model, PROMPT, params), 4)
    assert again == tokens
    other, _, _ = collect(
        sample(model, PROMPT, SamplingParams(**{**params.__dict__, "seed": 8})), 4
    )
    assert other != tokens


def test_filters_keep_only_top_k_and_the_top_p_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top_k = filtered_logits(logits, SamplingParams(1, 1, top_k=2))
    assert torch.isfinite(top_k).tolist() == [[True, True, False, False]]
    top_p = filtered_logits(logits, SamplingParams(1, 1, top_p=0.7))
    assert torch.isfinite(top_p).tolist() == [[True, True, False, False]]
    one = filtered_logits(logits, SamplingParams(1, 1, top_p=0.1))
    assert torch.isfinite(one).tolist() == [[True, False, False, False]]


def test_cached_logprobs_match_an_uncached_forward(model: torch.nn.Module) -> None:
    """The importance ratio of an on-policy step: sampled logprobs (temperature 1, no filter)
    against one uncached forward of prompt + sample. docs/sampling.md states the measured gap."""
    params = SamplingParams(num_samples=4, max_tokens=16, seed=3, prompt_logprobs=True)
    events = list(sample(model, PROMPT, params))
    assert isinstance(events[0], PromptLogprobs)
    tokens, logprobs, _ = collect(iter(events[1:]), 4)
    sequences = torch.tensor([PROMPT + row for row in tokens])
    with torch.no_grad():
        logits = model(input_ids=sequences).logits.float()
    full = torch.log_softmax(logits[:, :-1], -1).gather(-1, sequences[:, 1:, None])[..., 0]
    uncached = full[:, len(PROMPT) - 1 :]
    gap = (uncached - torch.tensor(logprobs)).abs().max().item()
    assert gap <= 5e-5, gap
    prompt_gap = (torch.tensor(events[0].logprobs) - full[0, : len(PROMPT) - 1]).abs().max()
    assert prompt_gap.item() <= 5e-5
    alone = torch.tensor([PROMPT])
    with torch.no_grad():
        prompt_logits = model(input_ids=alone).logits.float()
    exact = torch.log_softmax(prompt_logits[0, :-1], -1).gather(-1, alone[0, 1:, None])[:, 0]
    assert list(events[0].logprobs) == exact.tolist()  # bitwise a forward of the prompt alone


def test_stop_tokens_end_each_sample_and_the_rest_run_on(model: torch.nn.Module) -> None:
    free = SamplingParams(num_samples=6, max_tokens=8, seed=1)
    tokens, _, _ = collect(sample(model, PROMPT, free), 6)
    stop = tokens[0][2]
    params = SamplingParams(num_samples=6, max_tokens=8, seed=1, stop_token_ids=(stop,))
    stopped, _, reasons = collect(sample(model, PROMPT, params), 6)
    for row, full in zip(stopped, tokens):
        cut = full.index(stop) + 1 if stop in full else len(full)
        assert row == full[:cut]
        assert reasons[tokens.index(full)] == (
            StopReason.STOP_TOKEN if stop in full else StopReason.MAX_TOKENS
        )


def test_cancel_is_checked_between_tokens(model: torch.nn.Module) -> None:
    steps = 0

    def cancelled() -> bool:
        return steps >= 3

    events = sample(
        model, PROMPT, SamplingParams(num_samples=2, max_tokens=50), cancelled=cancelled
    )
    seen = []
    for event in events:
        assert isinstance(event, SampledStep)
        seen.append(event)
        steps += 1
    assert len(seen) == 4
    assert seen[-1].samples == ()
    assert seen[-1].finished == ((0, StopReason.CANCELLED), (1, StopReason.CANCELLED))


def test_context_wraps_every_forward_and_no_yield(model: torch.nn.Module) -> None:
    """An adapter is active only inside each forward (lora.py's ContextVar), never across a yield."""
    active = False
    forwards_inside = []

    @contextlib.contextmanager
    def applied() -> Iterator[None]:
        nonlocal active
        active = True
        try:
            yield
        finally:
            active = False

    model.register_forward_hook(lambda *_: forwards_inside.append(active))
    params = SamplingParams(num_samples=2, max_tokens=5, prompt_logprobs=True)
    for _ in sample(model, PROMPT, params, context=applied):
        assert not active
    assert forwards_inside == [True] * 6


# peft 0.21.2 reads transformers 5.23's deprecated alias when it wraps a model (the library
# pair's warning, not ours), as in the adapter tests.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_a_peft_adapter_model_samples_bitwise_its_generate(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415

    base = tiny_model("llama", tmp_path / "base")
    torch.manual_seed(4)
    adapted = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    ).eval()
    params = SamplingParams(num_samples=2, max_tokens=10, temperature=0.0, stop_token_ids=(EOS,))
    tokens, _, _ = collect(sample(adapted, PROMPT, params), 2)
    prompt = torch.tensor([PROMPT] * 2)
    reference = adapted.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=10,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    assert tokens == reference[:, len(PROMPT) :].tolist()
    with adapted.disable_adapter():
        plain, _, _ = collect(sample(adapted, PROMPT, params), 2)
    assert plain != tokens


def test_a_shared_base_with_a_lora_adapter_samples_bitwise_its_generate(tmp_path: Path) -> None:
    """The server's adapters (issue 25): the base is sampled with `applied` as the context; the
    oracle is generate on the base inside the same context."""
    from gradserve.server.models import lora  # noqa: PLC0415

    base = tiny_model("llama", tmp_path / "base")
    config = lora.LoraConfig(rank=4, alpha=8.0, seed=5)
    generator = torch.Generator().manual_seed(6)
    tensors = {
        name: (
            torch.randn(4, fan_in, generator=generator),
            torch.randn(fan_out, 4, generator=generator),
        )
        for name, fan_in, fan_out in lora.resolve_targets(base, config)
    }
    adapter = lora.LoraAdapter(base, config, tensors)
    params = SamplingParams(num_samples=2, max_tokens=10, temperature=0.0, stop_token_ids=(EOS,))
    tokens, _, _ = collect(sample(base, PROMPT, params, context=adapter.applied), 2)
    prompt = torch.tensor([PROMPT] * 2)
    with adapter.applied():
        reference = base.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=10,
            eos_token_id=EOS,
            pad_token_id=0,
        )
    assert tokens == reference[:, len(PROMPT) :].tolist()
    plain, _, _ = collect(sample(base, PROMPT, params), 2)
    assert plain != tokens
