"""Where large fresh buffers come from: writable uint8 tensors in transparent huge pages.

A fresh 134 MB buffer costs 33,000 page faults of 4 KiB, each zeroing its page: measured here,
copying 128 MB into a fresh `torch.empty` took 50 ms, into an anonymous private mapping advised
MADV_HUGEPAGE 10 ms (64 faults of 2 MiB); into memory already faulted in, 6 ms. The parameter
transfers (a StreamParameters snapshot, an upload's assembly buffers, the client's copies of
what it received) each fill one such buffer once, so they take it from here.

Where the kernel gives no huge pages (transparent_hugepage "never", other systems) the mapping
is ordinary memory, as fast as torch.empty. The memory goes back to the system (munmap) when
the last tensor viewing it is freed.
"""

from __future__ import annotations

import contextlib
import mmap

import torch

# Below one huge page a mapping gains nothing; torch's allocator serves small buffers faster.
HUGE_PAGE_BYTES = 2 * 1024 * 1024
_ADVICE = getattr(mmap, "MADV_HUGEPAGE", None)
_PRIVATE = getattr(mmap, "MAP_PRIVATE", None)


def empty_bytes(size: int) -> torch.Tensor:
    """A writable, uninitialised (in fact zeroed) uint8 tensor of `size` bytes."""
    if size < HUGE_PAGE_BYTES or _ADVICE is None or _PRIVATE is None:
        return torch.empty(size, dtype=torch.uint8)
    mapping = mmap.mmap(-1, size, flags=_PRIVATE)
    # A kernel without transparent huge pages refuses the advice: ordinary pages, still correct.
    with contextlib.suppress(OSError):
        mapping.madvise(_ADVICE)
    # The tensor holds the mapping through the buffer protocol; freeing it unmaps.
    return torch.frombuffer(mapping, dtype=torch.uint8)


def empty_like_bytes(dtype: torch.dtype, shape: tuple[int, ...], size: int) -> torch.Tensor:
    """A writable tensor of `dtype` and `shape` whose `size` bytes come from empty_bytes."""
    return empty_bytes(size).view(dtype).reshape(shape)
