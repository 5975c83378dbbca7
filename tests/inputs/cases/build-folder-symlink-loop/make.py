"""The build folder itself is a link to itself."""

from pathlib import Path


def make(repo: Path) -> None:
    (repo / "app").symlink_to("app")
