"""The Sample benchmark's model: a random 4-layer Llama served as a --model-factory.

Kept apart from bench/sampling.py so that the server process imports only this and torch.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from gradserve.server.models.specs import FactoryModel

VOCAB = 1024


def config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )


def build() -> FactoryModel:
    """Weights from the server's --seed (the factory runs after torch.manual_seed)."""
    module = AutoModelForCausalLM.from_config(config()).eval()
    return FactoryModel(module, input_shape=(8,), output_shape=(8, VOCAB), input_dtype=torch.int64)
