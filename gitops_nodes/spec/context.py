"""Content digests of build folders, so an image is rebuilt exactly when its inputs change."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

BUILD_REPOSITORY = "gitops-nodes/build"


def context_digest(folder: Path, dockerfile: str) -> str:
    """The sha256 of every file's relative path, executable bit and bytes, in sorted order."""
    digest = hashlib.sha256(f"dockerfile={dockerfile}\0".encode())
    for path in sorted(_files(folder)):
        relative = path.relative_to(folder).as_posix()
        executable = os.access(path, os.X_OK)
        digest.update(f"{relative}\0{int(executable)}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def build_tag(digest: str) -> str:
    """The image reference a build context gets: content-addressed, shared by equal contexts."""
    return f"{BUILD_REPOSITORY}:{digest[:16]}"


def _files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = [name for name in subdirs if name != ".git"]
        found.extend(Path(directory, name) for name in names)
    return found
