"""A FIFO named like a spec file: reading it would block forever."""

import os
from pathlib import Path


def make(repo: Path) -> None:
    os.mkfifo(repo / "pipe.yaml")
