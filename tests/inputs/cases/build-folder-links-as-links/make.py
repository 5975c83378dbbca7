"""Links in a build folder to /dev/zero, /etc/shadow, themselves and nothing: hashed as
links (as Docker sends them), never followed."""

from pathlib import Path


def make(repo: Path) -> None:
    app = repo / "app"
    (app / "zero").symlink_to("/dev/zero")
    (app / "shadow").symlink_to("/etc/shadow")
    (app / "loop").symlink_to("loop")
    (app / "gone").symlink_to("missing")
