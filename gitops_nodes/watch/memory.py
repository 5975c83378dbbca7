"""Give memory the allocator holds but no longer uses back to the system, between reconciles.

Two kinds of memory a long-running ``watch`` no longer uses are not returned by themselves:

- Garbage in reference cycles, which only a full collection frees, and the collector runs
  one only once the survivors of younger collections reach a quarter of the heap's objects
  (watch holds about 60,000): until then the process grows. The paths that run all the time
  make none (quiet reconciles, ended connections: tests hold it); an apply makes some
  (networkx's plan graph), so after one we collect at once: about 40 ms, once per change.
  A full collection also empties the interpreter's free lists (up to 2,000 freed tuples of
  each size, which quiet polls fill slowly to their caps: README, Running for months).
- Pages glibc keeps in its arenas once freed. ``malloc_trim`` returns them, as Dask's workers
  do. Elsewhere than glibc (musl, macOS) this part is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
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


def give_back_free_memory(collect: bool = False) -> bool:
    """Return the allocator's free pages to the system, after a full collection when collect;
    False where there is no malloc_trim."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
