"""A FIFO where the plan would go: opening it to write would block."""

from __future__ import annotations

import os
from pathlib import Path


def make(repo: Path) -> None:
    os.mkfifo(repo.parent / "tmp" / "plan.fifo")
