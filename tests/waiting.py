"""Polling a condition against a deadline: how the tests wait, instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    condition: Callable[[], Any], what: str, within: float = 5.0, every: float = 0.01
) -> Any:
    """Poll condition every `every` s until it returns something truthy, and return that;
    fail naming what after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        time.sleep(every)
