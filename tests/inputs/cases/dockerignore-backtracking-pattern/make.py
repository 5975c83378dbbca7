"""Names on which a naively translated .dockerignore pattern backtracks for hours."""

from pathlib import Path


def make(repo: Path) -> None:
    (repo / "app" / ("a" * 200)).write_text("x")
    deep = repo / "app" / "/".join(["d"] * 30)
    deep.mkdir(parents=True)
    (deep / "y").write_text("x")
