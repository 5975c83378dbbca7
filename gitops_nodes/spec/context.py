"""Content digests of build folders, so an image is rebuilt exactly when its inputs change."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gitops_nodes.spec.state import PythonBuild

BUILD_REPOSITORY = "gitops-nodes/build"
PACKAGE = Path(__file__).resolve().parent.parent  # gitops_nodes/


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


def runtime_files() -> list[Path]:
    """The in-container runtime a python node's image carries: gitops_nodes/pynode/."""
    return [PACKAGE / "__init__.py", *sorted((PACKAGE / "pynode").glob("*.py"))]


def python_digest(root: Path, build: PythonBuild) -> str:
    """The sha256 of everything a python node's image is made of: its files, packages, base
    image, config, and the runtime's own source, so any change makes a new image."""
    digest = hashlib.sha256(f"python\0{build.base_image}\0{build.config}\0".encode())
    digest.update("\0".join(build.packages).encode())
    for relative in (build.code, build.checkpoint, build.setup):
        if relative is not None:
            digest.update(f"\0{relative}\0".encode())
            digest.update((root / relative).read_bytes())
    # How the image is assembled (pyimage.py's Dockerfile) is part of what goes in, too.
    for path in [*runtime_files(), PACKAGE / "pyimage.py"]:
        digest.update(f"\0{path.relative_to(PACKAGE.parent).as_posix()}\0".encode())
        digest.update(path.read_bytes())
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
