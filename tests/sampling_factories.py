"""A tiny random Llama as a --model-factory (a full run of a transformer), for the Sample tests."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from gradserve.server.models.specs import FactoryModel

VOCAB = 61
EOS = 2


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.3,
        eos_token_id=EOS,
    )


def tiny_llama() -> FactoryModel:
    """Weights from the server's seed (the factory is called after torch.manual_seed)."""
    module = AutoModelForCausalLM.from_config(llama_config()).eval()
    return FactoryModel(module, input_shape=(8,), output_shape=(8, VOCAB), input_dtype=torch.int64)
