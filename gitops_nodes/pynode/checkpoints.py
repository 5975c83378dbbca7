"""A checkpoint file: an optional header of the versions it was made with, then the state.

    pickle stream 1: {"gitops-nodes-checkpoint": 1, "python": "3.11.7",
                      "packages": {"scikit-learn": "1.5.2", ...}}      (plain values only)
    pickle stream 2: {"model": ..., "species": [...]}                   the variables

A file of one plain pickled dict (a checkpoint made by hand with pickle.dump) has no header.
The header is read with an unpickler that admits no classes, so the host can read it (plan's
version check) without running anything from the file. Standard library only: the image's
runtime reads checkpoints with it too.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

MARK = "gitops-nodes-checkpoint"
VERSION = 1


class _PlainUnpickler(pickle.Unpickler):
    """Loads plain values (dicts, strings, numbers) and refuses any class or function."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain value")


def read_header(file: IO[bytes]) -> dict[str, Any] | None:
    """The header at the file's start, leaving the file after it; None (file rewound) when
    the file starts with the state itself."""
    start = file.tell()
    try:
        header = _PlainUnpickler(file).load()
    except Exception:  # the state's first object is not plain: no header
        header = None
    if isinstance(header, dict) and header.get(MARK) == VERSION:
        return header
    file.seek(start)
    return None


def header_of(path: str) -> dict[str, Any] | None:
    """The header of a checkpoint file, or None (no header, or not readable)."""
    try:
        with open(path, "rb") as file:
            return read_header(file)
    except OSError:
        return None


def make_header(python: str, packages: dict[str, str]) -> dict[str, Any]:
    return {MARK: VERSION, "python": python, "packages": dict(sorted(packages.items()))}
