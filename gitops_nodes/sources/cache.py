"""The content-addressed cache of fetched sources: blobs and folders by their sha256.

    <cache>/blobs/<sha256>            a fetched file
    <cache>/trees/<sha256>/...        a fetched folder (an MLflow model's artifacts)
    <cache>/index/<sha256 of identity>.json   what a remote identity (an S3 object's ETag,
                                      a registry version) was found to hold: {digest, size}

Entries are written to a temporary name and renamed, so a crash leaves no half entry, and
two gitops-nodes processes fetching the same thing at once both end with one good copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1024 * 1024


def cache_root() -> Path:
    """GITOPS_NODES_CACHE_DIR, else $XDG_CACHE_HOME/gitops-nodes, else ~/.cache/gitops-nodes."""
    explicit = os.environ.get("GITOPS_NODES_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gitops-nodes"


@dataclass(frozen=True)
class Entry:
    """A cached blob or tree: where it is, its digest and its size in bytes."""

    path: Path
    digest: str
    size: int
    tree: bool = False


class Cache:
    """Blobs and trees by content digest, and an index from remote identities to digests."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or cache_root()) / "sources"

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest

    def tree(self, digest: str) -> Path:
        return self.root / "trees" / digest

    def lookup(self, identity: str) -> Entry | None:
        """What an identity was found to hold, when it is still in the cache."""
        path = self.root / "index" / (hashlib.sha256(identity.encode()).hexdigest() + ".json")
        try:
            data = json.loads(path.read_text())
            digest, size, tree = str(data["digest"]), int(data["size"]), bool(data["tree"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        place = self.tree(digest) if tree else self.blob(digest)
        return Entry(place, digest, size, tree) if place.exists() else None

    def remember(self, identity: str, entry: Entry) -> None:
        index = self.root / "index"
        index.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(identity.encode()).hexdigest() + ".json"
        data = {"digest": entry.digest, "size": entry.size, "tree": entry.tree}
        _replace_text(index / name, json.dumps(data))

    def scratch(self) -> Path:
        """A new folder beside the entries, to download into before adding."""
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.root / "tmp"))

    def add_blob(self, path: Path, digest: str, size: int) -> Entry:
        """Move a downloaded file (already hashed) into the cache."""
        target = self.blob(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        return Entry(target, digest, size)

    def add_tree(self, folder: Path) -> Entry:
        """Move a downloaded folder into the cache under its tree digest."""
        digest, size = tree_digest(folder)
        target = self.tree(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(folder, ignore_errors=True)
        else:
            try:
                os.replace(folder, target)
            except OSError:  # another process put the same tree there meanwhile
                shutil.rmtree(folder, ignore_errors=True)
        return Entry(target, digest, size, tree=True)


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def tree_digest(folder: Path) -> tuple[str, int]:
    """(sha256 hex, total size) of a folder: each file's path and digest, in sorted order."""
    digest = hashlib.sha256(b"tree\0")
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        file_hex, size = file_digest(path)
        total += size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_hex}\0".encode())
    return digest.hexdigest(), total


def _replace_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
