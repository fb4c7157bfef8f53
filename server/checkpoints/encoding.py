"""How a StoreState becomes a checkpoint's bytes and back: tensors to safetensors, the rest
to a JSON manifest. Nothing here unpickles: results in the request-id window are rebuilt only
as gradserve.types result classes, looked up by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any

import safetensors.torch
import torch

from gradserve import types

from ..store.state_digest import state_digest
from ..store.store_state import StoreState

# 2: the manifest carries manifest_sha256, over its own canonical JSON (which holds the tensor
# file's sha256), so an edited count or version is caught too. 1 (tensors only) still reads.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
# Every key decode_state and the restore read, with the JSON type it must have.
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "model_version": int,
    "accumulated_batches": int,
    "accumulated_samples": int,
    "model_spec": str,
    "optimizer": str,
    "parameters": dict,
    "gradients": dict,
    "optimizer_state": dict,
    "request_ids": list,
    "tensors_sha256": str,
    "tensors_bytes": int,
}
TENSORS = "tensors.safetensors"
# The request-id window's results, from gradserve.types; older checkpoints' names for them.
_RESULT_TYPES = frozenset(
    (
        "GradientResult",
        "UpdateResult",
        "SetResult",
        "TrainResult",
        "StepResult",
        "LoadResult",
    )
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
    state: StoreState, *, model_spec: str, optimizer: str, name: str = ""
) -> tuple[bytes, dict[str, Any]]:
    """(safetensors bytes, manifest) for one store state; `name`: a named checkpoint's name
    ("" for a periodic one). The manifest carries the state digest (state_digest.py)."""
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
            [method, request_id, _encode(result, f"request_ids.{i}", tensors), digest]
            for i, (method, request_id, result, digest) in enumerate(state.request_ids)
        ],
        "saved_at": time.time(),
        "name": name,
        "state_digest": state_digest(state.parameters, state.buffers, state.optimizer),
    }
    data = safetensors.torch.save(tensors)
    manifest["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    manifest["tensors_bytes"] = len(data)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    return data, manifest


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces) without this digest."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_manifest(manifest: dict[str, Any]) -> None:
    """Every required key with its type, and (format 2) the manifest's own digest."""
    for key, expected in REQUIRED_KEYS.items():
        value = manifest.get(key)
        if key not in manifest or isinstance(value, bool) or not isinstance(value, expected):
            raise CheckpointError(f"manifest: {key!r} missing or not a {expected}")
    if manifest["format_version"] not in READABLE_FORMATS:
        raise CheckpointError(f"format_version {manifest['format_version']!r}")
    if manifest["format_version"] >= 2 and manifest.get("manifest_sha256") != manifest_digest(
        manifest
    ):
        raise CheckpointError("manifest: manifest_sha256 differs from its content's")


def decode_state(data: bytes, manifest: dict[str, Any]) -> StoreState:
    check_manifest(manifest)
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
            # Entries written before fingerprints have three fields: "" matches any payload.
            (entry[0], entry[1], _decode(entry[2], tensors), entry[3] if len(entry) > 3 else "")
            for entry in manifest["request_ids"]
        ),
        # Checkpoints written before buffers were saved have none.
        buffers=_decode(manifest["buffers"], tensors) if "buffers" in manifest else {},
    )
