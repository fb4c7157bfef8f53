"""The seed each of the trainer's steps carries, so its dropout masks follow from --seed alone.

Step i (from 0, over the whole run, across epochs) of a run with `--seed S` and
`--accumulation-steps K` carries `base(S) + i * K`, and the server seeds the step's batch j
(< K) with that plus j (docs/randomness.md): every batch of the run has its own seed, none
repeated, and a resumed run gives a step the seed it had. `base(S)` is the first 8 bytes of
SHA-256 of "gradserve-step-seeds:S", read little-endian, shifted right by 2 bits: a 62-bit
number, so the sums stay within int64.
"""

from __future__ import annotations

import functools
import hashlib


@functools.cache
def base_seed(seed: int) -> int:
    digest = hashlib.sha256(f"gradserve-step-seeds:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def first_batch_seed(seed: int, step: int, accumulation_steps: int) -> int:
    """The seed of step `step`'s first batch (its batch j takes this plus j)."""
    return base_seed(seed) + step * accumulation_steps
