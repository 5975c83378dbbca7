"""A 50 MB data set committed next to the spec, listed in the ignore file: never read."""

from pathlib import Path


def make(repo: Path) -> None:
    (repo / "data").mkdir()
    with (repo / "data" / "train.yaml").open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)
