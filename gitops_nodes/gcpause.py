"""Pausing the cyclic garbage collector around bulk construction of long-lived values."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block with automatic collection off, restoring it afterwards.

    Loading and planning thousands of documents allocates hundreds of thousands of objects
    that all outlive the call. Each automatic collection would traverse every one of them
    again to free nothing (about 100 ms a pass at 10,000 documents, several passes a load).
    Garbage made meanwhile is collected as usual once the block ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
