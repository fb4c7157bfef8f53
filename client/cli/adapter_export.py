"""An adapter run exported in PEFT's layout: adapter_config.json + adapter_model.safetensors.

The server names an adapter run's tensors as PEFT saves them
(`base_model.model.<module>.lora_A.weight` [r, in], `...lora_B.weight` [out, r]), and its model
spec carries the adapter's settings (`lora:BASE:base_sha256=...:rank=R:alpha=A:targets=...:
dropout=D:seed=S`), so the client writes the folder `peft.PeftModel.from_pretrained(base, DIR)`
loads without asking the server for anything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def adapter_settings(model_spec: str) -> dict[str, str]:
    """rank, alpha, dropout, ... of an adapter run's spec; {} for a spec that is no adapter."""
    if not model_spec.startswith("lora:"):
        return {}
    return dict(part.split("=", 1) for part in model_spec.split(":")[2:] if "=" in part)


def peft_config(settings: dict[str, str], base_model: str, modules: list[str]) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": int(settings["rank"]),
        "lora_alpha": float(settings["alpha"]),
        "lora_dropout": float(settings.get("dropout", "0")),
        # Each adapted module by its full name, so peft adapts exactly those.
        "target_modules": modules,
        "bias": "none",
        # peft sets this itself where a base module is transformers' Conv1D (GPT-2 style).
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def write_adapter(
    out: Path, tensors: dict[str, torch.Tensor], settings: dict[str, str], base_model: str
) -> Path:
    """DIR/adapter_config.json and DIR/adapter_model.safetensors; the weights file's path."""
    modules = sorted(
        {
            name.removeprefix(_PREFIX).removesuffix(suffix)
            for name in tensors
            for suffix in _SUFFIXES
            if name.endswith(suffix)
        }
    )
    unexpected = [name for name in tensors if not name.endswith(_SUFFIXES)]
    if unexpected or not modules:
        raise ValueError(f"not an adapter's tensors: {sorted(unexpected)[:3]}")
    out.mkdir(parents=True, exist_ok=True)
    config = peft_config(settings, base_model, modules)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    weights = out / WEIGHTS_FILE
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(weights))
    return weights
