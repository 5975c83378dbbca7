"""The clock apply waits with: the system's, or a virtual one that tests advance at will."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time and sleeping: every deadline apply keeps is measured with one."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let seconds pass (a virtual clock just moves on)."""
        ...


class SystemClock:
    """The process's monotonic clock and time.sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)  # polling against a deadline; the caller says what it waits for


SYSTEM_CLOCK = SystemClock()
