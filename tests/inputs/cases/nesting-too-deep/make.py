"""A document nested 100,000 levels deep: refused at level 101, not parsed to the end."""

from pathlib import Path


def make(repo: Path) -> None:
    (repo / "deep.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
