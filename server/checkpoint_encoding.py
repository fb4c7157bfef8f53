"""How a StoreState becomes a checkpoint's bytes and back: tensors to safetensors, the rest
to a JSON manifest. Nothing here unpickles: results in the request-id window are rebuilt only
as gradserve.types result classes, looked up by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any

import safetensors.torch
import torch

from gradserve import types
from gradserve.server.store_state import StoreState

FORMAT_VERSION = 1
TENSORS = "tensors.safetensors"
# The request-id window's results, from gradserve.types; older checkpoints' names for them.
_RESULT_TYPES = frozenset(
    ("GradientResult", "UpdateResult", "SetResult", "TrainResult", "StepResult")
)
_RESULT_RENAMED = {"StepOutcome": "StepResult"}


class CheckpointError(ValueError):
    """A checkpoint on disk cannot be used; the message says why."""


# -- encoding: nested Python values <-> JSON + a table of tensors --------------------------


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for `value`; tensors go into `tensors` under `key` (a dotted path) and are
    referenced by it. Dicts and tuples are tagged so int keys and tuples come back as such."""
    if isinstance(value, torch.Tensor):
        # safetensors refuses tensors that share storage: every one gets its own copy.
        tensors[key] = value.detach().clone().contiguous()
        return {"$tensor": key}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_encode(item, f"{key}.{i}", tensors) for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item, f"{key}.{i}", tensors) for i, item in enumerate(value)]}
    if isinstance(value, dict):
        return {
            "$dict": [
                [_encode(k, f"{key}.key{i}", tensors), _encode(v, f"{key}.{k}", tensors)]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "$dataclass": type(value).__name__,
            "fields": {
                f.name: _encode(getattr(value, f.name), f"{key}.{f.name}", tensors)
                for f in dataclasses.fields(value)
            },
        }
    raise TypeError(f"cannot checkpoint a {type(value).__name__} at {key}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        return tensors[value["$tensor"]]
    if "$tuple" in value:
        return tuple(_decode(item, tensors) for item in value["$tuple"])
    if "$dict" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["$dict"]}
    if "$dataclass" in value:
        # Only result types, looked up by name: a manifest cannot make this build anything else.
        name = _RESULT_RENAMED.get(value["$dataclass"], value["$dataclass"])
        cls = getattr(types, name, None) if name in _RESULT_TYPES else None
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise CheckpointError(f"unknown result type {value['$dataclass']!r}")
        fields = {k: _decode(v, tensors) for k, v in value["fields"].items()}
        if cls is types.GradientResult and isinstance(fields.get("gradients"), tuple):
            # Checkpoints written before the shared types kept (name, tensor) pairs.
            fields["gradients"] = dict(fields["gradients"])
        return cls(**fields)
    raise CheckpointError(f"unknown JSON object with keys {sorted(value)}")


def encode_state(
    state: StoreState, *, model_spec: str, optimizer: str
) -> tuple[bytes, dict[str, Any]]:
    """(safetensors bytes, manifest) for one store state."""
    tensors: dict[str, torch.Tensor] = {}
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_version": state.version,
        "accumulated_batches": state.accumulated_batches,
        "accumulated_samples": state.accumulated_samples,
        "model_spec": model_spec,
        "optimizer": optimizer,
        "parameters": _encode(state.parameters, "parameters", tensors),
        "gradients": _encode(state.gradients, "gradients", tensors),
        "buffers": _encode(state.buffers, "buffers", tensors),
        "optimizer_state": _encode(state.optimizer, "optimizer", tensors),
        "request_ids": [
            [method, request_id, _encode(result, f"request_ids.{i}", tensors)]
            for i, (method, request_id, result) in enumerate(state.request_ids)
        ],
        "saved_at": time.time(),
    }
    data = safetensors.torch.save(tensors)
    manifest["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    manifest["tensors_bytes"] = len(data)
    return data, manifest


def decode_state(data: bytes, manifest: dict[str, Any]) -> StoreState:
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"format_version {manifest.get('format_version')!r}")
    if len(data) != manifest["tensors_bytes"]:
        raise CheckpointError(f"{TENSORS}: {len(data)} bytes, expected {manifest['tensors_bytes']}")
    if hashlib.sha256(data).hexdigest() != manifest["tensors_sha256"]:
        raise CheckpointError(f"{TENSORS}: sha256 differs from the manifest's")
    tensors = safetensors.torch.load(data)
    return StoreState(
        version=int(manifest["model_version"]),
        accumulated_batches=int(manifest["accumulated_batches"]),
        accumulated_samples=int(manifest["accumulated_samples"]),
        parameters=_decode(manifest["parameters"], tensors),
        gradients=_decode(manifest["gradients"], tensors),
        optimizer=_decode(manifest["optimizer_state"], tensors),
        request_ids=tuple(
            (method, request_id, _decode(result, tensors))
            for method, request_id, result in manifest["request_ids"]
        ),
        # Checkpoints written before buffers were saved have none.
        buffers=_decode(manifest["buffers"], tensors) if "buffers" in manifest else {},
    )
