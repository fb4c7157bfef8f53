"""CreateRun of an adapter run: a base the server serves and a LoRA adapter, as a RunSpec."""

from __future__ import annotations

from gradserve.errors import InvalidArgumentError
from gradserve.run_types import RunRequest

from ..models.adapter_models import BaseRegistry
from ..models.lora import ALL_LINEAR, LoraConfig, resolve_targets
from .lifecycle import RunSpec


def adapter_run_spec(request: RunRequest, bases: BaseRegistry) -> RunSpec:
    """CreateRun of an adapter run: a base the server serves and a LoRA adapter over it, the
    run's seed seeding the adapter. Every field is checked before anything is built."""
    if request.model:
        raise InvalidArgumentError(
            "model: give a model or a base_model with lora, not both", field="model"
        )
    if request.with_optimizer_state:
        raise InvalidArgumentError(
            "with_optimizer_state: only with from_checkpoint", field="with_optimizer_state"
        )
    if request.lora is None:
        raise InvalidArgumentError("lora: an adapter run needs its LoraSpec", field="lora")
    base = bases.get(request.base_model)
    lora = LoraConfig(
        rank=request.lora.rank,
        alpha=request.lora.alpha,
        target_modules=request.lora.target_modules or ALL_LINEAR,
        dropout=request.lora.dropout,
        seed=request.seed if request.seed is not None else 0,
    )
    resolve_targets(base.module, lora)  # names that match no linear layer: lora.target_modules
    return RunSpec(
        model="",
        loss=request.loss or None,
        optimizer=request.optimizer or "sgd",
        seed=lora.seed,
        base_model=base.name,
        lora=lora,
    )
