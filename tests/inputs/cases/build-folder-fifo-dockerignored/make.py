"""A FIFO in a build folder that its .dockerignore leaves out, as Docker's build does."""

import os
from pathlib import Path


def make(repo: Path) -> None:
    os.mkfifo(repo / "app" / "pipe")
