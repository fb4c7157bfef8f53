"""The RL example's task: write a prompt's digits in sorted order; its reward and its model.

A prompt is BOS, `length` digits (token ids 0-9), SEP; a completion is `length` tokens. The
reward is the fraction of positions holding the sorted digit there, so a uniform policy scores
about 1/vocab and the best one scores 1. The model is a tiny random Llama written as a local
Hugging Face folder: the frozen base a LoRA adapter run is trained over, from its random start.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Sequence
from pathlib import Path

import torch

DIGITS = 10
BOS = 10
SEP = 11
VOCAB = 12


def make_prompts(count: int, length: int, generator: torch.Generator) -> list[list[int]]:
    """`count` prompts of `length` random digits each, framed by BOS and SEP."""
    digits = torch.randint(0, DIGITS, (count, length), generator=generator)
    return [[BOS, *row, SEP] for row in digits.tolist()]


def reward(prompt: Sequence[int], completion: Sequence[int]) -> float:
    """Fraction of positions where the completion holds the sorted prompt digit."""
    wanted = sorted(prompt[1:-1])
    hits = sum(1 for got, want in zip(completion, wanted, strict=False) if got == want)
    return hits / len(wanted)


def write_base(folder: Path, seed: int) -> Path:
    """A 2-layer Llama over the task's 12 tokens, drawn from `seed`, saved as safetensors."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        bos_token_id=BOS,
        eos_token_id=SEP,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    return folder
