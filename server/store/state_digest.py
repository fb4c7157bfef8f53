"""The state digest: one SHA-256 over a run's parameters, buffers and optimizer state.

The canonical order (docs/protocol.md#state-digests gives it for other languages): the header
`gradserve-state-digest-v1\\n`, then the tensor groups parameters, buffers, optimizer in that
order, each group's tensors sorted by their checkpoint key (the safetensors key, bytewise in
UTF-8), and for each tensor: the key, its safetensors dtype name (each as a u32 little-endian
length and the bytes), its rank as u32 and each dimension as u64, its byte length as u64 and its
raw little-endian bytes. Keys are the ones checkpoint_encoding.py writes ("parameters.w",
"buffers.bn.running_mean", "optimizer.state.0.exp_avg"), so the digest of a live run and of
its checkpoint's tensors.safetensors are the same computation over the same bytes.

Not covered, on purpose: accumulated gradients and the request-id windows (a load drops the
first and neither changes what the next update computes from a fresh accumulation), the
optimizer's non-tensor values (param_groups' hyperparameters are configuration: the optimizer
spec and the learning rate each update carries), and the version (a load must bump it for
version-checking clients, yet its digest must equal the checkpoint's: GetStateDigest answers
the version beside the digest instead).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import torch

HEADER = b"gradserve-state-digest-v1\n"
GROUPS = ("parameters", "buffers", "optimizer")
# torch dtype -> the dtype name safetensors writes in its header.
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def tensor_leaves(value: Any, key: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint key, tensor) for every tensor inside `value`, keyed as
    checkpoint_encoding._encode keys them; nothing is copied."""
    if isinstance(value, torch.Tensor):
        yield key, value
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from tensor_leaves(item, f"{key}.{index}")
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from tensor_leaves(item, f"{key}.{name}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from tensor_leaves(getattr(value, field.name), f"{key}.{field.name}")


def _framed(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<I", len(data)) + data


def _update(digest: Any, key: str, tensor: torch.Tensor) -> None:
    value = tensor.detach()
    dtype = SAFETENSORS_DTYPES.get(value.dtype)
    if dtype is None:
        raise TypeError(f"{key}: no state digest for dtype {value.dtype}")
    shape = tuple(value.shape)
    raw = value.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    digest.update(_framed(key) + _framed(dtype) + struct.pack("<I", len(shape)))
    digest.update(b"".join(struct.pack("<Q", size) for size in shape))
    digest.update(struct.pack("<Q", raw.nbytes))
    digest.update(raw.data)


def state_digest(
    parameters: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor], optimizer: Any
) -> str:
    """Lowercase hex SHA-256 of one state in the canonical order. `optimizer` is the
    optimizer's state_dict; only its tensors count."""
    groups = {
        "parameters": dict(tensor_leaves(dict(parameters), "parameters")),
        "buffers": dict(tensor_leaves(dict(buffers), "buffers")),
        "optimizer": dict(tensor_leaves(optimizer, "optimizer")),
    }
    digest = hashlib.sha256(HEADER)
    for group in GROUPS:
        tensors = groups[group]
        for key in sorted(tensors, key=str.encode):
            _update(digest, key, tensors[key])
    return digest.hexdigest()
