"""Content digests of build folders, so an image is rebuilt exactly when its inputs change."""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from pathlib import Path
from typing import Any

from gitops_nodes.spec.dockerignore import DOCKERIGNORE, DockerIgnore, DockerIgnoreError
from gitops_nodes.spec.repofiles import ReadError, inside, open_problem, open_regular, os_problem
from gitops_nodes.spec.state import PythonBuild

_CHUNK = 1024 * 1024

BUILD_REPOSITORY = "gitops-nodes/build"
PACKAGE = Path(__file__).resolve().parent.parent  # gitops_nodes/


def context_digest(folder: Path, dockerfile: str, shown: str = "") -> str:
    """The sha256 of what Docker's build sends from folder: each path that its .dockerignore
    leaves in, with its executable bit and bytes (a symbolic link as the link itself, never
    what it points to), in sorted order, plus the Dockerfile and .dockerignore, which Docker
    sends in any case. shown is the folder as messages name it; raises ReadError for a path
    that is neither a file, a folder nor a link (a FIFO, device or socket) or cannot be read."""
    digest = hashlib.sha256(f"dockerfile={dockerfile}\0".encode())
    try:
        ignore = DockerIgnore(_ignore_text(folder, shown))
    except DockerIgnoreError as exc:
        raise ReadError(f"{_join(shown, DOCKERIGNORE)}:{exc.line}", exc.problem) from None
    always = {DOCKERIGNORE, posixpath.normpath(dockerfile)}
    for relative, kind in _entries(folder, ignore, always, shown):
        path = folder / relative
        if kind == "link":
            digest.update(_name(f"{relative}\0link\0{os.readlink(path)}\0"))
            continue
        executable = os.access(path, os.X_OK)
        digest.update(_name(f"{relative}\0{int(executable)}\0"))
        _hash_file(digest, path, _join(shown, relative))
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
        if relative is None:
            continue
        digest.update(f"\0{relative}\0".encode())
        if relative == build.code and build.code_text is not None:
            digest.update(build.code_text.encode())  # a notebook's cell
        else:
            _hash_file(digest, inside(root, relative), relative)
    for item in build.fetched:  # verified content digests: large models are not read again
        digest.update(f"\0fetched\0{item.destination}\0{item.digest}\0{item.tree}".encode())
    # How the image is assembled (pyimage.py's Dockerfile) is part of what goes in, too.
    for path in [*runtime_files(), PACKAGE / "pyimage.py"]:
        digest.update(f"\0{path.relative_to(PACKAGE.parent).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_tag(digest: str) -> str:
    """The image reference a build context gets: content-addressed, shared by equal contexts."""
    return f"{BUILD_REPOSITORY}:{digest[:16]}"


def _ignore_text(folder: Path, shown: str) -> str:
    path = folder / DOCKERIGNORE
    if not os.path.lexists(path):
        return ""
    descriptor = open_regular(path, _join(shown, DOCKERIGNORE))
    try:
        data = os.read(descriptor, _CHUNK + 1)
    except OSError as exc:
        raise ReadError(_join(shown, DOCKERIGNORE), os_problem(exc)) from None
    finally:
        os.close(descriptor)
    if len(data) > _CHUNK:
        raise ReadError(_join(shown, DOCKERIGNORE), "over 1 MiB; expected a list of patterns")
    return data.decode(errors="replace")


def _entries(
    folder: Path, ignore: DockerIgnore, always: set[str], shown: str
) -> list[tuple[str, str]]:
    """(relative path, "file" or "link") of everything the build sends, never following a link."""
    found: list[tuple[str, str]] = []
    pending = [""]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(folder / current if current else folder) as listing:
                entries = list(listing)
        except OSError as exc:
            raise ReadError(_join(shown, current), os_problem(exc)) from None
        for entry in entries:
            relative = f"{current}/{entry.name}" if current else entry.name
            if entry.name == ".git":
                continue
            excluded = relative not in always and ignore.excluded(relative)
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                raise ReadError(_join(shown, relative), os_problem(exc)) from None
            if stat.S_ISDIR(mode):
                if not excluded or ignore.has_exclusions:  # a `!` may re-include inside
                    pending.append(relative)
            elif excluded:
                continue
            elif stat.S_ISLNK(mode):
                found.append((relative, "link"))
            elif stat.S_ISREG(mode):
                found.append((relative, "file"))
            else:
                problem = open_problem(mode)
                raise ReadError(_join(shown, relative), f"{problem}; list it in .dockerignore")
    # Sorted by path parts, as the digest always was: a folder without links or ignored files
    # keeps its image tag across this change, so nothing is rebuilt for it.
    return sorted(found, key=lambda item: item[0].split("/"))


def _hash_file(digest: Any, path: Path, shown: str) -> None:
    descriptor = open_regular(path, shown)
    try:
        while chunk := os.read(descriptor, _CHUNK):
            digest.update(chunk)
    except OSError as exc:
        raise ReadError(shown, os_problem(exc)) from None
    finally:
        os.close(descriptor)


def _name(text: str) -> bytes:
    """A path's text as the bytes the file system holds: a name that is not UTF-8 (common in
    Latin-1 archives) comes from os.scandir with each odd byte as a lone surrogate, and
    surrogateescape gives those bytes back, as Docker's context tar sends them. UTF-8 names
    encode as they always did, so their digests do not change."""
    return text.encode("utf-8", "surrogateescape")


def _join(shown: str, relative: str) -> str:
    shown = "" if shown == "." else shown
    return f"{shown}/{relative}" if shown and relative else (shown or relative or ".")
