"""Tiny random causal LMs saved as local Hugging Face folders, for the base and adapter tests.

Offline before transformers is imported: huggingface_hub reads HF_HUB_OFFLINE once, at import.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

VOCAB = 61


def tiny_llama(folder: Path, seed: int = 0, vocab: int = VOCAB) -> Path:
    """A 2-layer Llama-style model (nn.Linear projections, no dropout) saved into `folder`."""
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
    )
    return _save(config, folder, seed)


def tiny_gpt2(folder: Path, seed: int = 0, vocab: int = VOCAB) -> Path:
    """A 2-layer GPT-2-style model (transformers' Conv1D projections, dropouts 0)."""
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=1,
    )
    return _save(config, folder, seed)


def _save(config: object, folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    return folder


def load_local(folder: Path) -> torch.nn.Module:
    """The same folder loaded the way a user's local loop would (its own copy)."""
    return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)


def peft_model(
    folder: Path,
    rank: int,
    alpha: float,
    targets: list[str] | str,
    seed: int,
    dropout: float = 0.0,
) -> torch.nn.Module:
    """The user's local equivalent: peft over its own copy of the base, from the same seed."""
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415

    base = load_local(folder)
    gpt2 = base.config.model_type == "gpt2"
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=targets,
        lora_dropout=dropout,
        fan_in_fan_out=gpt2,
    )
    return get_peft_model(base, config)


def peft_adapter_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`<module>.lora_A` / `<module>.lora_B` -> tensor, from a peft model's trainable parameters."""
    tensors = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            module, _, kind = name.removeprefix("base_model.model.").rpartition(".lora_")
            tensors[f"{module}.lora_{kind[0]}"] = parameter
    return tensors


def token_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The formula written out: sum of weight * -log p(target)."""
    logprobs = torch.log_softmax(logits, dim=-1)
    return -(logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * weights).sum()
