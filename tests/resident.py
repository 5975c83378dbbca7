"""The test process's own resident memory, as the kernel counts it."""

from __future__ import annotations

import resource


def resident_bytes() -> int:
    """This process's resident set size now, in bytes (/proc/self/statm's second field)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()
