"""A build-folder file whose name is Latin-1 bytes, as unpacked from an old archive."""

import os
from pathlib import Path


def make(repo: Path) -> None:
    (repo / "app" / os.fsdecode(b"caf\xe9.txt")).write_text("x")
