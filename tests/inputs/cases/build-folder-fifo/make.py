"""A FIFO in a build folder: hashing it would block forever."""

import os
from pathlib import Path


def make(repo: Path) -> None:
    os.mkfifo(repo / "app" / "pipe")
