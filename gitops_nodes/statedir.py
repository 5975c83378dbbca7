"""The state directory: where apply publishes the routing table and holds its lock."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gitops_nodes.errors import GitopsNodesError, LockTimeout
from gitops_nodes.live import UNLABELLED, Ownership

TABLE_FILE = "routing-table.json"
LOCK_FILE = "apply.lock"
OWNER_FILE = "owner.json"


def default_base() -> Path:
    """$GITOPS_NODES_STATE_DIR, else the XDG state home, else ~/.local/state/gitops-nodes."""
    explicit = os.environ.get("GITOPS_NODES_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "gitops-nodes"


@dataclass(frozen=True)
class StateDir:
    """One project's state directory."""

    path: Path

    @classmethod
    def for_project(cls, project: str, base: Path | None = None) -> StateDir:
        return cls((base or default_base()) / project)

    @property
    def table(self) -> Path:
        return self.path / TABLE_FILE

    @property
    def owner_file(self) -> Path:
        return self.path / OWNER_FILE

    @contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Hold the apply lock; raise LockTimeout when another apply keeps it past timeout."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / LOCK_FILE
        with open(lock_path, "a+") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        handle.seek(0)
                        holder = handle.read().strip() or "another process"
                        raise LockTimeout(
                            f"{lock_path} is held by {holder}; another apply or destroy is "
                            f"running on this project (waited {timeout:g}s)"
                        ) from None
                    time.sleep(0.1)  # flock has no timed wait; poll the lock, not the work
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)


def read_ownership(state: StateDir) -> Ownership:
    """The containers this state directory counts as its own (see live.Ownership).

    Before its first apply a state directory has no owner id yet; what it would claim then is
    what ensure_ownership will record: containers with no owner label only when it already
    published a routing table (it was used before owner labels existed, so the project's
    unlabelled containers are the ones it made).
    """
    path = state.owner_file
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        legacy = frozenset({UNLABELLED}) if state.table.exists() else frozenset()
        return Ownership("", legacy)
    except (OSError, ValueError) as exc:
        raise GitopsNodesError(
            f"the owner id in {path} is unreadable ({exc}); restore it (it names the "
            "containers this state directory made) or remove it and take them over with --adopt"
        ) from exc
    owner = data.get("owner") if isinstance(data, dict) else None
    adopted = data.get("adopted", []) if isinstance(data, dict) else None
    if not isinstance(owner, str) or not owner or not isinstance(adopted, list):
        raise GitopsNodesError(
            f'{path} is not an owner record (expected {{"owner": id, "adopted": [...]}}); '
            "restore it, or remove it and take the containers over with --adopt"
        )
    return Ownership(owner, frozenset(str(a) for a in adopted))


def ensure_ownership(state: StateDir, ownership: Ownership) -> Ownership:
    """Record ownership in the state directory, giving it an owner id on its first apply;
    the ownership as recorded. Called with the apply lock held."""
    owner = ownership.owner or secrets.token_hex(16)
    recorded = Ownership(owner, ownership.adopted - {owner})
    if ownership.owner and state.owner_file.exists() and read_ownership(state) == recorded:
        return recorded
    state.path.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"owner": owner, "adopted": sorted(recorded.adopted)}, indent=2) + "\n"
    temporary = state.owner_file.with_suffix(f".tmp-{os.getpid()}")
    temporary.write_text(text)
    temporary.replace(state.owner_file)
    return recorded


@dataclass(frozen=True)
class BalancerAck:
    """What a running balancer last reported: the table generation it serves, and the
    removed instances it still has requests in flight on."""

    pid: int
    generation: int
    draining: dict[str, int]
    healthy: frozenset[str] = frozenset()
    where: str = ""  # for a balancer on another host (a Swarm task): its admin address

    def describe(self) -> str:
        """How a message names this balancer."""
        return self.where or str(self.pid)


def balancer_acks(state: StateDir) -> list[BalancerAck]:
    """The reports of the balancers serving this state directory; stale ones are removed."""
    folder = state.path / "balancers"
    acks = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            ack = BalancerAck(
                int(data["pid"]),
                int(data["generation"]),
                dict(data["draining"]),
                frozenset(data.get("healthy", ())),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced right now, or not ours: the next poll reads it
        if not _alive(ack.pid):
            path.unlink(missing_ok=True)
            continue
        acks.append(ack)
    return acks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
