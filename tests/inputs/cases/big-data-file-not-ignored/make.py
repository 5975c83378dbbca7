"""A 50 MB data set committed next to the spec, not ignored: refused unread."""

from pathlib import Path


def make(repo: Path) -> None:
    with (repo / "train.yaml").open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)
