"""Checks that a decoded checkpoint fits the live model before anything of it is used.

A checksum only proves the bytes are the ones written; these checks prove they make sense
here: every tensor group (parameters, gradients, ...) has the model's names, dtypes and
shapes, the optimizer state has the live optimizer's layout, counts and versions are
non-negative ints, and request-id window entries are well formed. Any failure is a
CheckpointError, so the checkpoint is skipped and the one before it used.

Tensor groups are generic: a new group (model buffers) is one entry in TENSOR_GROUPS and
one layout in ModelLayout.groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gradserve import types
from gradserve.errors import FailedPreconditionError

from ..store.parameter_store import ParameterStore
from ..store.request_ids import MAX_REQUEST_ID_BYTES
from ..store.store_state import StoreState
from .encoding import CheckpointError

Layout = Mapping[str, tuple[torch.dtype, tuple[int, ...]]]

# StoreState attribute -> (the layout it must match, every name of it required?).
TENSOR_GROUPS: dict[str, tuple[str, bool]] = {
    "parameters": ("parameters", True),
    "gradients": ("parameters", False),  # only the parameters whose .grad is set
    # Checkpoints written before buffers were saved have none; when present, all of them.
    "buffers": ("buffers", False),
}
_COUNTS = ("version", "accumulated_batches", "accumulated_samples")


@dataclass(frozen=True)
class ModelLayout:
    """What a checkpoint must fit: tensor layouts by group, parameters in the optimizer's
    order, and the live optimizer's state_dict (for its structure)."""

    groups: Mapping[str, Layout]
    optimizer: Mapping[str, Any]
    model_spec: str = ""
    optimizer_spec: str = ""

    @classmethod
    def of(cls, store: ParameterStore) -> ModelLayout:
        _, parameters = store.read_parameters(
            [], lambda name, value: (name, (value.dtype, tuple(value.shape)))
        )
        info = store.info()
        buffers = {
            name: (value.dtype, tuple(value.shape))
            for name, value in store.model.module.named_buffers()
        }
        return cls(
            {"parameters": dict(parameters), "buffers": buffers},
            store.optimizer.state_dict(),
            info.model_spec,
            info.optimizer,
        )


def check_same_model(source: str, manifest: Mapping[str, Any], layout: ModelLayout) -> None:
    """A checkpoint of another model or optimizer is the operator's mistake, not damage: it is
    refused (the server exits 2), never skipped in favour of an older one."""
    if (manifest["model_spec"], manifest["optimizer"]) != (
        layout.model_spec,
        layout.optimizer_spec,
    ):
        raise FailedPreconditionError(
            f"checkpoint {source} is for model {manifest['model_spec']} with optimizer "
            f"{manifest['optimizer']}; this server runs {layout.model_spec} with "
            f"{layout.optimizer_spec}",
            field="checkpoint_dir",
        )


def _tensor_fits(where: str, value: Any, expected: tuple[torch.dtype, tuple[int, ...]]) -> None:
    dtype, shape = expected
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{where}: a {type(value).__name__}, expected a tensor")
    if value.dtype != dtype or tuple(value.shape) != shape:
        raise CheckpointError(
            f"{where}: {value.dtype} {list(value.shape)}, the model has {dtype} {list(shape)}"
        )


def check_group(group: str, tensors: Any, layout: Layout, *, every_name: bool) -> None:
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{group}: a {type(tensors).__name__}, expected a dict")
    unknown = sorted(set(tensors) - set(layout))
    missing = sorted(set(layout) - set(tensors)) if every_name else []
    if unknown or missing:
        raise CheckpointError(f"{group}: unknown names {unknown}, missing names {missing}")
    for name, value in tensors.items():
        _tensor_fits(f"{group}.{name}", value, layout[name])


def _non_negative_int(where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{where}: {value!r}, expected an int >= 0")


def check_optimizer_state(saved: Any, live: Mapping[str, Any], parameters: Layout) -> None:
    """The saved state_dict has the live one's keys and param groups; every per-parameter
    tensor has its parameter's dtype and shape, except 0-d scalars such as Adam's step."""
    if not isinstance(saved, dict) or set(saved) != set(live):
        keys = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(f"optimizer_state: keys {keys}, the optimizer has {sorted(live)}")
    if not live:
        return
    groups, live_groups = saved["param_groups"], live["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(live_groups):
        raise CheckpointError("optimizer_state.param_groups: not the optimizer's groups")
    for index, (group, live_group) in enumerate(zip(groups, live_groups, strict=True)):
        if not isinstance(group, dict) or set(group) != set(live_group):
            raise CheckpointError(f"optimizer_state.param_groups.{index}: not the optimizer's keys")
        if group["params"] != live_group["params"]:
            raise CheckpointError(f"optimizer_state.param_groups.{index}.params differ")
    ordered = list(parameters.values())
    state = saved["state"]
    if not isinstance(state, dict):
        raise CheckpointError("optimizer_state.state: expected a dict")
    for index, entry in state.items():
        where = f"optimizer_state.state.{index}"
        if (
            not isinstance(index, int)
            or not 0 <= index < len(ordered)
            or not isinstance(entry, dict)
        ):
            raise CheckpointError(f"{where}: not a parameter of the model")
        dtype, shape = ordered[index]
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() == 0 and shape != ():
                if key == "step" and not bool(value >= 0):
                    raise CheckpointError(f"{where}.step: {value.item()}, expected >= 0")
            elif isinstance(value, torch.Tensor):
                _tensor_fits(f"{where}.{key}", value, (dtype, shape))


def check_request_ids(entries: Any, parameters: Layout) -> None:
    if not isinstance(entries, tuple):
        raise CheckpointError("request_ids: expected a list")
    for index, entry in enumerate(entries):
        where = f"request_ids.{index}"
        # (method, request_id, result, fingerprint); result None: dropped for the window's
        # byte budget; fingerprint "": not known (checkpoints from before fingerprints).
        if not (isinstance(entry, tuple) and len(entry) == 4):
            raise CheckpointError(f"{where}: expected [method, request_id, result, fingerprint]")
        method, request_id, result, fingerprint = entry
        if not (isinstance(method, str) and method and isinstance(request_id, str)):
            raise CheckpointError(f"{where}: method and request_id must be strings")
        if not request_id or len(request_id.encode()) > MAX_REQUEST_ID_BYTES:
            raise CheckpointError(f"{where}: request_id of {len(request_id.encode())} bytes")
        if not isinstance(fingerprint, str):
            raise CheckpointError(f"{where}: the fingerprint is a {type(fingerprint).__name__}")
        if result is None:
            continue
        if not dataclasses.is_dataclass(result) or isinstance(result, type):
            raise CheckpointError(f"{where}: the result is a {type(result).__name__}")
        if isinstance(result, types.GradientResult):
            check_group(f"{where}.gradients", dict(result.gradients), parameters, every_name=False)


def check_state(state: StoreState, layout: ModelLayout) -> None:
    """CheckpointError naming the first field of `state` that does not fit `layout`."""
    for name in _COUNTS:
        _non_negative_int(name, getattr(state, name))
    for group, (reference, every_name) in TENSOR_GROUPS.items():
        check_group(group, getattr(state, group), layout.groups[reference], every_name=every_name)
    parameters = layout.groups["parameters"]
    check_optimizer_state(state.optimizer, layout.optimizer, parameters)
    check_request_ids(state.request_ids, parameters)
