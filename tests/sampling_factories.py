"""A tiny random Llama as a --model-factory (a full run of a transformer), for the Sample tests;
and one whose forwards a test can hold (ForwardGate), for the fairness and cancel tests."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import threading
from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

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


class ForwardGate:
    """Holds every forward of the gated model while closed, and counts them: lets a test
    keep Sample calls in progress, inside the server's work, for as long as it needs."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._open = True
        self.forwards = 0
        self.waiting = 0

    def pass_through(self) -> None:
        with self._changed:
            self.forwards += 1
            self.waiting += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._open)
            self.waiting -= 1
            self._changed.notify_all()

    def set_open(self, is_open: bool) -> None:
        with self._changed:
            self._open = is_open
            self._changed.notify_all()

    def wait_until(self, condition: Callable[[ForwardGate], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: condition(self), timeout)


GATE = ForwardGate()


class GatedLlama(LlamaForCausalLM):
    """The tiny Llama, each forward passing GATE first (shared by the server's copies)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        GATE.pass_through()
        return super().forward(*args, **kwargs)


def gated_llama() -> FactoryModel:
    module = GatedLlama(llama_config()).eval()
    return FactoryModel(module, input_shape=(8,), output_shape=(8, VOCAB), input_dtype=torch.int64)
