"""A spec file that is a link to a file outside the repository is not read."""

from pathlib import Path


def make(repo: Path) -> None:
    (repo / "out.yaml").symlink_to("/etc/passwd")
