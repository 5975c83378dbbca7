"""Python code nested deeper than Python's parser and compiler go, written here."""

from __future__ import annotations

from pathlib import Path


def make(repo: Path) -> None:
    (repo / "predict.py").write_text("y = " + "-" * 200_000 + "x" + "\n")
