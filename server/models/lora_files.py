"""LoRA adapters in PEFT's layout: adapter_config.json + adapter_model.safetensors, both ways.

Export writes what `peft.PeftModel.from_pretrained(base, folder)` loads: keys
`base_model.model.<module>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r], and a config
naming each adapted module by its full name (so peft picks exactly those). Import takes a
user's PEFT LoRA adapter over the same base; the modules come from the tensor keys, and what
gradserve does not compute (DoRA, rsLoRA, per-module ranks, biases, extra saved modules) is
refused naming the field rather than silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gradserve.errors import InvalidArgumentError

from .lora import LoraAdapter, LoraConfig, linear_shape

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
# Bound on adapter_config.json: a config is a few hundred bytes.
MAX_CONFIG_BYTES = 1 << 20


def peft_config(adapter: LoraAdapter, base_name: str, task_type: str | None) -> dict[str, Any]:
    """The adapter_config.json document."""
    conv1d = any(
        not isinstance(module, nn.Linear)
        for name, module in adapter.base.named_modules()
        if name in adapter.lora_a
    )
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_name,
        "r": adapter.config.rank,
        "lora_alpha": adapter.config.alpha,
        "lora_dropout": adapter.config.dropout,
        "target_modules": adapter.module_names,
        "bias": "none",
        # transformers' Conv1D keeps its weight as [in, out]; peft must know to transpose.
        "fan_in_fan_out": conv1d,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def peft_tensors(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """The adapter_model.safetensors tensors, on CPU: the adapter's state is in PEFT's names."""
    return {key: tensor.detach().cpu() for key, tensor in adapter.state_dict().items()}


def save_peft(
    adapter: LoraAdapter, folder: Path, base_name: str, task_type: str | None = "CAUSAL_LM"
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    document = peft_config(adapter, base_name, task_type)
    (folder / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    save_file(peft_tensors(adapter), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


def _refuse(field: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{field}: {problem}", field=field)


def _check_config(document: Mapping[str, Any]) -> tuple[int, float, float]:
    """(rank, alpha, dropout) of a PEFT LoRA config gradserve computes exactly."""
    if document.get("peft_type") != "LORA":
        raise _refuse("adapter.config.peft_type", f"{document.get('peft_type')!r} is not LORA")
    refused = {
        "use_dora": False,
        "use_rslora": False,
        "bias": "none",
        "fan_in_fan_out": None,  # either value: the layer's type decides, as in peft
    }
    for key, allowed in refused.items():
        if allowed is not None and document.get(key, allowed) not in (allowed, None):
            raise _refuse(f"adapter.config.{key}", f"{document[key]!r} is not supported")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if document.get(key):
            raise _refuse(f"adapter.config.{key}", "is not supported (give one rank and alpha)")
    rank, alpha, dropout = (
        document.get("r"),
        document.get("lora_alpha"),
        document.get("lora_dropout", 0.0),
    )
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise _refuse("adapter.config.r", f"{rank!r} is not an integer")
    for key, value in (("lora_alpha", alpha), ("lora_dropout", dropout)):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _refuse(f"adapter.config.{key}", f"{value!r} is not a number")
    return rank, float(alpha), float(dropout)  # type: ignore[arg-type]


def adapter_from_peft(
    base: nn.Module,
    document: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    seed: int = 0,
) -> LoraAdapter:
    """A run's adapter from a PEFT LoRA adapter (config document + its tensors) on `base`."""
    rank, alpha, dropout = _check_config(document)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, _, kind = key.removeprefix(PREFIX).rpartition(".lora_")
        if not key.startswith(PREFIX) or kind not in ("A.weight", "B.weight"):
            raise _refuse("adapter.tensors", f"{key!r} is not a LoRA A/B weight in PEFT's layout")
        if not tensor.is_floating_point():
            raise _refuse("adapter.tensors", f"{key} is {tensor.dtype}, not a float tensor")
        pairs.setdefault(module, {})[kind[0]] = tensor
    modules = dict(base.named_modules())
    for module, pair in pairs.items():
        if len(pair) != 2:
            raise _refuse("adapter.tensors", f"{module} has lora_{''.join(pair)} only")
        if module not in modules or linear_shape(modules[module]) is None:
            raise _refuse("adapter.tensors", f"{module} is not a linear layer of the base")
    if not pairs:
        raise _refuse("adapter.tensors", "no LoRA weights")
    config = LoraConfig(rank, alpha, tuple(pairs), dropout, seed)
    return LoraAdapter(base, config, {m: (p["A"], p["B"]) for m, p in pairs.items()})


def load_peft(base: nn.Module, folder: Path, seed: int = 0) -> LoraAdapter:
    """A PEFT adapter folder (adapter_config.json + adapter_model.safetensors) on `base`."""
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise _refuse("adapter", f"{folder} holds no {path.name}")
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise _refuse("adapter.config", f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _refuse("adapter.config", f"not JSON ({error})") from None
    if not isinstance(document, dict):
        raise _refuse("adapter.config", "not a JSON object")
    return adapter_from_peft(base, document, load_file(str(weights_path)), seed)
