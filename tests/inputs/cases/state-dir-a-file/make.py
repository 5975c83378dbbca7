"""--state-dir naming a file: said to be one by every command (logs used to ignore it, plan
and status said a routing table inside it was unreadable)."""

from pathlib import Path


def make(repo: Path) -> None:
    tmp = repo.parent / "tmp"  # the runner's {tmp}, outside the repository
    tmp.mkdir(exist_ok=True)
    (tmp / "state").write_text("not a folder\n")
