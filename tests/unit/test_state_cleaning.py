"""What `destroy` removes from a project's state directory, and what it keeps and says why."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitops_nodes.statedir import (
    DESTROYED_STATE,
    LOCK_FILE,
    StateDir,
    clean_state,
    secret_key,
)


@pytest.fixture
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def _everything(state: StateDir, watch_pid: int, balancer_pid: int) -> None:
    """A state directory as apply, serve and watch leave it."""
    with state.lock(5):
        pass  # apply.lock
    state.table.write_text("{}")
    (state.path / "watch.json").write_text(json.dumps({"pid": watch_pid}))
    checkout = state.path / "source" / "checkouts" / ("a" * 40)
    checkout.mkdir(parents=True)
    (checkout / "spec.yaml").write_text("kind: Node\n")
    (state.path / "source" / "repo.git").mkdir()
    (state.path / "balancers").mkdir()
    (state.path / "balancers" / f"{balancer_pid}.json").write_text(
        json.dumps({"pid": balancer_pid, "generation": 3, "draining": {}})
    )
    (state.path / "balancer-token").write_text("secret")
    (state.path / "owner.json").write_text('{"owner": "abc", "adopted": []}')
    secret_key(state)  # secret-digest.key
    (state.path / ".watch.abc123").write_text("{")  # an interrupted atomic write


def test_destroy_leaves_no_state_behind(tmp_path: Path, dead_pid: int) -> None:
    state = StateDir.for_project("p", tmp_path)
    _everything(state, dead_pid, dead_pid)

    cleaned = clean_state(state, 5)

    assert not state.path.exists()
    assert list(tmp_path.iterdir()) == []
    assert cleaned.kept == ()
    assert set(cleaned.removed) == {*DESTROYED_STATE, ".watch.abc123"}
    assert cleaned.removed[-1] == LOCK_FILE  # the lock goes last, while held


def test_what_running_processes_use_is_kept_and_said_why(
    tmp_path: Path, live_pid: int, dead_pid: int
) -> None:
    state = StateDir.for_project("p", tmp_path)
    _everything(state, live_pid, live_pid)
    (state.path / "notes.txt").write_text("someone's")

    cleaned = clean_state(state, 5)

    kept = dict(cleaned.kept)
    assert kept == {
        "watch.json": f"a watch (pid {live_pid}) still runs on this project",
        "source": f"a watch (pid {live_pid}) still runs on this project",
        "balancers": f"balancers still running report there (pid {live_pid})",
        "notes.txt": "not state gitops-nodes knows",
    }
    assert sorted(p.name for p in state.path.iterdir()) == [
        "apply.lock",
        "balancers",
        "notes.txt",
        "source",
        "watch.json",
    ]
    assert not state.table.exists()


def test_only_the_reports_of_balancers_that_are_gone_are_removed(
    tmp_path: Path, live_pid: int, dead_pid: int
) -> None:
    state = StateDir.for_project("p", tmp_path)
    _everything(state, dead_pid, live_pid)
    (state.path / "balancers" / f"{dead_pid}.json").write_text(json.dumps({"pid": dead_pid}))

    clean_state(state, 5)

    assert [p.name for p in (state.path / "balancers").iterdir()] == [f"{live_pid}.json"]


def test_a_missing_state_directory_is_nothing_to_clean(tmp_path: Path) -> None:
    cleaned = clean_state(StateDir.for_project("never", tmp_path), 5)
    assert (cleaned.removed, cleaned.kept) == ((), ())
    assert list(tmp_path.iterdir()) == []


def test_the_lock_works_again_after_its_file_was_removed(tmp_path: Path, dead_pid: int) -> None:
    state = StateDir.for_project("p", tmp_path)
    _everything(state, dead_pid, dead_pid)
    clean_state(state, 5)

    with state.lock(5):
        assert (state.path / LOCK_FILE).read_text().startswith("pid ")


def test_an_apply_waiting_on_the_lock_that_destroy_removes_locks_the_new_file(
    tmp_path: Path, dead_pid: int
) -> None:
    state = StateDir.for_project("p", tmp_path)
    _everything(state, dead_pid, dead_pid)
    waiting = threading.Event()
    held: list[bool] = []

    def apply() -> None:
        waiting.set()
        with state.lock(30):
            # Locked on the file at the path, not on the one destroy unlinked.
            held.append((state.path / LOCK_FILE).exists())

    with state.lock(5):
        thread = threading.Thread(target=apply)
        thread.start()
        waiting.wait(5)
        time.sleep(0.3)  # let it open the lock file and start waiting on it
        (state.path / LOCK_FILE).unlink()  # what clean_state does, holding the lock
    thread.join(30)

    assert held == [True]
