"""Host memory freed during a CPU training step goes back to the system.

glibc serves an allocation below its mmap threshold from a heap it keeps after the memory is freed,
and raises that threshold (up to 32 MiB) each time a larger mapped block is freed. Training on a CPU
allocates and frees activations and gathered ZeRO-3 weights of a few MiB to tens of MiB every step,
so the freed memory piles up in the heaps: measured on 2 gloo ranks and a 1B model, 0.16 of a full
bf16 model copy per rank after the first step (``benchmarks/load_memory.py``). A fixed threshold of
:data:`MMAP_THRESHOLD` maps each block of that size or more on its own and unmaps it when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

logger = logging.getLogger("ovis.train")

#: Blocks of this many bytes or more are mapped on their own (and no longer raise the threshold).
MMAP_THRESHOLD = 2**20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
_done = False


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (once per process). False where the C
    library is not glibc (nothing changes there)."""
    global _done
    if _done:
        return True
    mallopt = _glibc("mallopt")
    if mallopt is None:
        logger.debug("no glibc mallopt: the mmap threshold stays as it is")
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _done


def release_heap() -> bool:
    """Hand the memory glibc's heaps hold free back to the system (``malloc_trim(0)``); False where
    the C library is not glibc. Worth it after a burst of small allocations freed together: parsing
    a 152K-word tokenizer leaves 0.17 GB of freed parse memory resident beside its 0.06 GB."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def _glibc(function: str) -> Any:
    """``function`` of the C library, or None where it has none (not glibc)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), function)
    except (OSError, AttributeError, TypeError):
        return None
