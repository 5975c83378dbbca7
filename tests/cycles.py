"""Garbage in reference cycles made by a block of code, found by a collection after it.

Such garbage waits for a full collection, which the collector runs rarely in a large heap, so
a long-running process that makes it on every request or poll grows until then.
"""

from __future__ import annotations

import gc
import types
from collections import Counter


class Cycles:
    """`with Cycles(prefixes) as cycles:` runs the block with the collector off; afterwards
    `cycles.found` counts what a collection found unreachable, by the name of its type (of a
    function: its own name), for names starting with one of prefixes (everything when none).
    Only names are kept: the objects themselves are freed when the block ends."""

    def __init__(self, prefixes: tuple[str, ...] = ()) -> None:
        self.prefixes = prefixes
        self.found: Counter[str] = Counter()

    def __enter__(self) -> Cycles:
        gc.collect()  # what came before is not the block's
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept in gc.garbage
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            gc.collect()
            self.found = Counter(name for thing in gc.garbage if (name := self._name(thing)))
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()

    def _name(self, thing: object) -> str | None:
        of = thing if isinstance(thing, types.FunctionType) else type(thing)
        name = f"{of.__module__}.{of.__qualname__}"
        return name if not self.prefixes or name.startswith(self.prefixes) else None
