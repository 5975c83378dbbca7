"""Secret files of instances on one Docker host: written into a private folder on a tmpfs,
each mounted read-only into its instance at the path the spec names.

A tmpfs, so a secret never reaches a disk; a folder only the user running gitops-nodes can
enter (0700), so no other user of the host reads it (the files themselves are 0444, so that
a container running as any user reads its own). One folder per instance, removed with it.
After the host restarts the folders are gone with the tmpfs: an instance the engine starts
again then fails to start, and the next apply (or watch's drift healing) replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from pathlib import Path

from gitops_nodes.errors import RuntimeFailure
from gitops_nodes.spec.secrets import NodeSecrets

_FOLDER = "gitops-nodes-secrets"
_MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}


def _candidates() -> list[Path]:
    """Where a private folder on a memory file system is usually found, best first."""
    found = []
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        found.append(Path(runtime_dir) / _FOLDER)
    found.append(Path("/dev/shm") / f"{_FOLDER}-{os.getuid()}")
    found.append(Path("/run") / f"{_FOLDER}-{os.getuid()}")
    return found


def _filesystem_of(path: Path, mounts: str) -> str | None:
    """The type of the file system path is on, from /proc/self/mounts' text."""
    best, kind = "", None
    text = str(path)
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = text == point or text.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def secrets_root() -> Path:
    """The user's private folder for secret files, on a tmpfs; made if needed."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        mounts = ""
    for candidate in _candidates():
        parent = candidate.parent
        if not parent.is_dir() or _filesystem_of(parent.resolve(), mounts) not in (
            _MEMORY_FILESYSTEMS
        ):
            continue
        with contextlib.suppress(FileExistsError, PermissionError):
            candidate.mkdir(mode=0o700)
        try:
            found = candidate.lstat()
        except OSError:
            continue
        # A symbolic link or another user's folder (in a shared /dev/shm another user could
        # have made it first) would hand our secrets to them: never used.
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
            continue
        if found.st_mode & 0o077:
            candidate.chmod(0o700)
        return candidate
    raise RuntimeFailure(
        "no private folder on a tmpfs for secret files: tried "
        + ", ".join(str(c) for c in _candidates())
        + " (mount a tmpfs on /dev/shm, or set XDG_RUNTIME_DIR to one)"
    )


def _short(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def instance_folder(project: str, instance: str) -> Path:
    return secrets_root() / _short(project) / _short(instance)


def write_files(project: str, instance: str, secrets: NodeSecrets) -> dict[str, dict[str, str]]:
    """Write the node's secret files for one instance; the Docker binds that mount each
    read-only at its path in the container (none when the node has no secret files)."""
    if not secrets.files:
        return {}
    folder = instance_folder(project, instance)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    binds = {}
    for target, value in secrets.files:
        path = folder / _short(target)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o444)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(value.data)
        binds[str(path)] = {"bind": target, "mode": "ro"}
    return binds


def remove_instance_files(project: str, instance: str) -> None:
    """Remove an instance's secret files (nothing when it has none); makes no folder."""
    for root in _candidates():
        shutil.rmtree(root / _short(project) / _short(instance), ignore_errors=True)


def remove_project_files(project: str) -> None:
    """Remove the project's (by then empty) folder of instances' secret files."""
    for root in _candidates():
        shutil.rmtree(root / _short(project), ignore_errors=True)
