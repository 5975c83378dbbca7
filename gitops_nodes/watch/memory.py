"""Give memory the allocator holds but no longer uses back to the system, between reconciles.

A long-running ``watch`` frees about as much as it allocates (tracemalloc saw no growth of
live Python objects over a 30-minute soak), while glibc keeps freed pages in its arenas,
fragmented by the balancer's requests and the reconciler's threads. ``malloc_trim`` returns
them, as Dask's workers do. It does not stop the slow growth the soak benchmark measures
(README, Running for months), whose source is not found yet. Elsewhere than glibc (musl,
macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def give_back_free_memory() -> bool:
    """Return the allocator's free pages to the system; False where there is no malloc_trim."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
