"""Where python nodes' Unix sockets live on the host: a folder private to the user."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from gitops_nodes.runtime import docker as runtime


@pytest.fixture
def temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    return tmp_path


def test_the_folder_is_made_private_and_paths_stay_short(temp: Path) -> None:
    assert runtime.private_sockets_root()
    root = temp / f"gitops-nodes-{os.getuid()}"
    assert root.stat().st_mode & 0o777 == 0o700

    root.chmod(0o755)  # made by an earlier version, say
    assert runtime.private_sockets_root()
    assert root.stat().st_mode & 0o777 == 0o700

    long_name = "a-project-with-a-long-name-" * 4
    socket_path = runtime.socket_folder(long_name, f"{long_name}-node-0-abcdef") / "socket"
    assert len(str(socket_path)) - len(str(temp)) < 50  # well inside 108 bytes


def test_a_folder_that_is_not_ours_is_not_used(temp: Path) -> None:
    elsewhere = temp / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (temp / f"gitops-nodes-{os.getuid()}").symlink_to(elsewhere)

    assert not runtime.private_sockets_root()
