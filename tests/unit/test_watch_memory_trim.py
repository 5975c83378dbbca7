"""Between reconciles, watch gives the allocator's free pages back to the system."""

from __future__ import annotations

import platform

from gitops_nodes.watch.memory import give_back_free_memory
from tests.resident import resident_bytes


def test_free_pages_go_back_to_the_system() -> None:
    assert platform.libc_ver()[0] == "glibc", "this machine's libc is glibc: trim must be found"
    # Many small blocks freed in no order leave the heap fragmented: free, yet resident.
    blocks = [bytearray(1000) for _ in range(100_000)]  # past pymalloc: glibc's heap
    keep = blocks[::97]  # a few survivors pin the heap's top, as long-lived objects do
    del blocks
    before = resident_bytes() // 1024
    assert give_back_free_memory() is True
    after = resident_bytes() // 1024
    assert after < before - 10_000, f"{before} KiB resident before the trim, {after} after"
    assert len(keep) > 0
