"""Base models for adapter runs: loaded once (local Hugging Face folder or registry spec), frozen.

A base is the operator's: named by `--base-model NAME=DIR` or by a registry spec, loaded once
per server whatever the number of runs on it, and never written (`requires_grad_(False)`,
`eval()`; adapters add to its outputs through hooks, lora.py). Its digest, SHA-256 over its
tensors by name, is what checkpoints and GetModelInfo name it by. Loading a folder never
reaches the network (`local_files_only=True`) and reads only safetensors (no pickle).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradserve.errors import InvalidArgumentError

from .model import Model
from .specs import build

FIELD = "base_model"


@dataclass(frozen=True)
class Base:
    """One frozen base: its module, where it came from and the digest of its tensors."""

    name: str
    module: nn.Module
    # The folder it was loaded from, or the registry spec it was built from.
    source: str
    digest: str
    # Token-id range of a causal language model ([0, vocab_size)); None for registry specs.
    vocab_size: int | None = None
    # A registry spec's served model (its batches and loss); None for a language model.
    served: Model | None = None


def parse_base_flag(entry: str) -> tuple[str, str]:
    """`NAME=DIR` (or `NAME=SPEC`) -> (name, source); InvalidArgumentError otherwise."""
    name, separator, source = entry.partition("=")
    if not separator or not name or not source:
        raise InvalidArgumentError(
            f"base_model: {entry!r} is not NAME=DIR (or NAME=SPEC)", field=FIELD
        )
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise InvalidArgumentError(
            f"base_model: name {name!r} may hold only letters, digits, '-', '_' and '.'",
            field=FIELD,
        )
    return name, source


def tensor_digest(module: nn.Module) -> str:
    """SHA-256 over the module's state (parameters and persistent buffers), sorted by name:
    for each, its name, dtype, shape and raw bytes. Equal digests mean equal tensors."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name};{str(tensor.dtype).removeprefix('torch.')};".encode())
        digest.update(f"{list(tensor.shape)};".encode())
        flat = tensor.to("cpu").contiguous().reshape(-1)
        # Bytes of any dtype (bf16 included, which numpy lacks), without a copy on CPU.
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def freeze(module: nn.Module) -> nn.Module:
    """No gradients into the base, its own dropouts off: it is shared by every run on it."""
    module.requires_grad_(False)
    module.eval()
    return module


def load_pretrained(name: str, directory: str | Path, device: torch.device | None = None) -> Base:
    """A causal LM from a local folder in the Hugging Face layout (config.json + *.safetensors),
    frozen, on `device`. Nothing is downloaded; pickled weights (*.bin) are refused."""
    folder = Path(directory)
    if not (folder / "config.json").is_file():
        raise InvalidArgumentError(
            f"base_model {name}: {folder} holds no config.json (a local Hugging Face folder)",
            field=FIELD,
        )
    if not any(folder.glob("*.safetensors")):
        raise InvalidArgumentError(
            f"base_model {name}: {folder} holds no *.safetensors weights", field=FIELD
        )
    try:
        from transformers import AutoModelForCausalLM  # noqa: PLC0415 (the optional llm extra)
    except ImportError as error:
        raise InvalidArgumentError(
            f"base_model {name}: transformers is not installed; pip install 'gradserve[llm]'",
            field=FIELD,
        ) from error
    module = AutoModelForCausalLM.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False
    )
    if device is not None:
        module.to(device)
    freeze(module)
    vocab_size = int(module.get_input_embeddings().num_embeddings)
    return Base(name, module, str(folder), tensor_digest(module), vocab_size)


def from_spec(name: str, spec: str, seed: int | None = 0, factories: Sequence[str] = ()) -> Base:
    """A registry model (`mlp:...`, `cnn:...`, a factory) as a frozen base."""
    model = build(spec, None, seed, factories=factories)
    freeze(model.module)
    return Base(name, model.module, spec, tensor_digest(model.module), served=model)


def load_base(
    entry: str, device: torch.device | None = None, factories: Sequence[str] = ()
) -> Base:
    """One `--base-model` entry: NAME=DIR for a folder, NAME=SPEC for a registry spec."""
    name, source = parse_base_flag(entry)
    if Path(source).is_dir():
        return load_pretrained(name, source, device)
    base = from_spec(name, source, factories=factories)
    if device is not None:
        base.module.to(device)
    return base
