"""A spec file that is a link to itself, and one to nothing."""

from pathlib import Path


def make(repo: Path) -> None:
    (repo / "loop.yaml").symlink_to("loop.yaml")
    (repo / "gone.yaml").symlink_to("missing.yaml")
