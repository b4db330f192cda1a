"""Keep freed CPU memory for reuse instead of handing it back to the OS after every step.

A training step allocates and frees the same large activations every time. glibc serves blocks above its mmap
threshold with fresh mappings and trims the top of the heap once more than its trim threshold is free, so each step
faults back in the memory the previous one released. Raising both thresholds (mallopt, the same as
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_) keeps that memory in the heap; what it gains is measured in
docs/performance.md ("The allocator"). Raising only the trim threshold would be worse than nothing: it freezes
glibc's adaptive mmap threshold at 128 KiB, and every large tensor becomes a fresh mapping.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
LIMIT = 1 << 30


def keep_freed_memory(limit: int = LIMIT) -> bool:
    """Set glibc's mmap and trim thresholds to `limit` bytes; False where the C library has no mallopt (macOS,
    musl) or refuses a value, in which case nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))
