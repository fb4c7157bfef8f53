"""Tinker's models as gradserve runs: capabilities, create_model (a LoRA adapter run), get_info.

A model is an ordinary adapter run of its principal (listed, checkpointed, served over gRPC
too), named after the session and the client's `model_seq_id`: `SESSION-train-N` for the model
id `SESSION:train:N` that the SDK itself derives. Any of the principal's runs over a language
model base can be named as a model id (its run name). Tinker's LoRA settings map onto
LoraConfig: `rank`, alpha 32 (Tinker's fixed alpha), dropout 0, the seed (None: a random one),
and the targets from `train_attn` (linear layers under an attention module), `train_mlp`
(under an MLP module) and `train_unembed` (the output layer).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from torch import nn

from gradserve.errors import InvalidArgumentError

from ..models.bases import Base
from ..models.lora import LoraConfig, linear_shape, resolve_targets
from ..runs.folders import RunSpec
from ..runs.principals import Principal
from ..runs.registry import RunRegistry
from .errors import bad_field
from .sessions import Session

LORA_ALPHA = 32.0
ATTENTION_WORDS = ("attn", "attention")
MLP_WORDS = ("mlp", "feed_forward", "ffn")


def run_name_of(model_id: str) -> str:
    """The run behind a model id: `S:train:N` is run `S-train-N`; any other id is a run name."""
    return model_id.replace(":", "-")


def capabilities(runs: RunRegistry) -> dict[str, Any]:
    models = []
    for name in runs.bases.names():
        base = runs.bases.get(name)
        if base.vocab_size is None:
            continue  # a registry spec: not a language model the SDK can drive
        config = getattr(base.module, "config", None)
        context = getattr(config, "max_position_embeddings", None)
        models.append(
            {
                "model_name": name,
                "trainable": True,
                "sampleable": True,
                "max_context_length": context,
            }
        )
    return {"supported_models": models}


def lora_targets(base: nn.Module, mlp: bool, attn: bool, unembed: bool) -> tuple[str, ...]:
    """Module names for the chosen kinds of linear layers: their last names when those pick
    exactly the same layers (short specs), else the full names."""
    output = getattr(base, "get_output_embeddings", lambda: None)()
    chosen = []
    for name, module in base.named_modules():
        if not name or linear_shape(module) is None:
            continue
        parts = name.lower().split(".")[:-1]
        kind_attn = any(word in part for part in parts for word in ATTENTION_WORDS)
        kind_mlp = any(word in part for part in parts for word in MLP_WORDS)
        if (module is output and unembed) or (kind_attn and attn) or (kind_mlp and mlp):
            chosen.append(name)
    if not chosen:
        raise bad_field("lora_config", "the flags select no linear layer of this base")
    short = sorted({name.rpartition(".")[2] for name in chosen})
    picked = [
        name
        for name, module in base.named_modules()
        if name and any(name == s or name.endswith("." + s) for s in short)
    ]
    return tuple(short) if picked == chosen else tuple(chosen)


def create_model(
    runs: RunRegistry, principal: Principal, session: Session, body: Mapping[str, Any]
) -> dict[str, Any]:
    seq = _int(body, "model_seq_id")
    optimizer = body.get("optimizer_config") or {"type": "adamw"}
    if not isinstance(optimizer, dict) or optimizer.get("type") != "adamw":
        raise bad_field("optimizer_config.type", "only adamw is served")
    base = _language_base(runs, body.get("base_model"))
    lora = body.get("lora_config") or {"rank": 32}
    if not isinstance(lora, dict):
        raise bad_field("lora_config", "an object")
    flags = [bool(lora.get(key, True)) for key in ("train_mlp", "train_attn", "train_unembed")]
    seed = lora.get("seed")
    if seed is None:
        seed = secrets.randbits(31)  # the SDK's "None means a random seed"
    config = LoraConfig(
        rank=_int(lora, "rank", "lora_config.rank"),
        alpha=LORA_ALPHA,
        target_modules=lora_targets(base.module, *flags),
        dropout=0.0,
        seed=_int({"seed": seed}, "seed", "lora_config.seed"),
    )
    resolve_targets(base.module, config)
    spec = RunSpec(model="", optimizer="adamw", seed=config.seed, base_model=base.name, lora=config)
    model_id = f"{session.session_id}:train:{seq}"
    # The request id makes a retried create_model find the run its first try made.
    runs.create(run_name_of(model_id), spec, principal, request_id=f"tinker-{model_id}")
    return {"model_id": model_id, "type": "create_model"}


def model_info(runs: RunRegistry, principal: Principal, model_id: str) -> dict[str, Any]:
    run = runs.run(run_name_of(model_id), principal)
    spec = run.spec
    if spec.lora is None or not spec.base_model:
        raise InvalidArgumentError(
            f"model_id: run {run.name!r} is not an adapter run over a base", field="model_id"
        )
    base = runs.bases.get(spec.base_model)
    config = getattr(base.module, "config", None)
    return {
        "type": "get_info",
        "model_id": model_id,
        # The tokenizer by the base's name: a client loads it from its own copy (docs/tinker.md).
        "model_data": {
            "arch": getattr(config, "model_type", None),
            "model_name": base.name,
            "tokenizer_id": base.name,
        },
        "is_lora": True,
        "lora_rank": spec.lora.rank,
        "model_name": base.name,
    }


def _language_base(runs: RunRegistry, name: object) -> Base:
    if not isinstance(name, str) or not name:
        raise bad_field("base_model", "a base model name is needed")
    base = runs.bases.get(name)
    if base.vocab_size is None:
        raise bad_field("base_model", f"{name[:80]!r} is not a language model")
    return base


def _int(body: Mapping[str, Any], key: str, field: str = "") -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_field(field or key, f"{value!r} is not an integer")
    return value
