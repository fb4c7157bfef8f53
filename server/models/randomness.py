"""Seeded forward passes: a request's seed drives its dropout masks, the server's generator stays.

`torch.random.fork_rng` saves the global generators (the CPU one, and the model's CUDA device's)
and puts them back afterwards, so a seeded step neither reads nor moves the stream that unseeded
steps draw from. Inside, `torch.manual_seed(seed)` is exactly what a client runs before its
local twin's forward pass (docs/randomness.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Random ops inside draw from a generator seeded with `seed`; None: the ordinary stream."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
