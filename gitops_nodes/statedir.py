"""The state directory: where apply publishes the routing table and holds its lock, balancers
report, and watch keeps its clone and status; and what `destroy` removes of it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitops_nodes.errors import GitopsNodesError, LockTimeout
from gitops_nodes.live import UNLABELLED, Ownership

TABLE_FILE = "routing-table.json"
LOCK_FILE = "apply.lock"
OWNER_FILE = "owner.json"
WATCH_FILE = "watch.json"  # the watch loop's last status (watch/reconcile.py)
SOURCE_DIR = "source"  # watch's clone of a Git repository and its checkouts (watch/source.py)
BALANCERS_DIR = "balancers"  # each running balancer's report (BalancerAck)
SWARM_TOKEN_FILE = "balancer-token"  # the Swarm balancer's admin key (runtime/swarm_balancer.py)
# The key of the secrets' digests (spec/secrets.py): random, made when a secret is first
# digested, readable by its owner only. It holds no secret value.
SECRET_KEY_FILE = "secret-digest.key"

# What `destroy` removes from a project's state directory once the project's containers,
# images and services are gone, each entry only while no process still uses it (see
# clean_state), the apply lock last. The README's "Running for months" lists them. A file
# not named here is kept and reported, not guessed at: whoever adds state adds it here, or
# to KEPT_BY_DESTROY with the reason.
DESTROYED_STATE: tuple[str, ...] = (
    TABLE_FILE,
    WATCH_FILE,
    SOURCE_DIR,
    BALANCERS_DIR,
    SWARM_TOKEN_FILE,
    # Its digests label only containers destroy removed; the next apply makes a new key.
    SECRET_KEY_FILE,
    # The owner id names the containers this directory made (see read_ownership): once
    # destroy removed them all, it names nothing, and the next apply makes a new one.
    OWNER_FILE,
    LOCK_FILE,
)
# What `destroy` keeps on purpose, name -> why (none today).
KEPT_BY_DESTROY: dict[str, str] = {}
# A project's name: it names containers, labels and a folder of the state directory, so
# Compose's rule (and never a path: `../x` would put the state beside others' projects).
PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
PROJECT_RULE = "1 to 63 lowercase letters, digits, '-' and '_', starting with a letter or digit"


def valid_project(name: str) -> bool:
    """Whether name may name a project (--project, a saved plan's project)."""
    return re.fullmatch(PROJECT_PATTERN, name) is not None


# Temporary files of our atomic writes (a write interrupted by a crash leaves one behind).
_TEMPORARY_PREFIXES = (".watch.", f".{TABLE_FILE}.", "owner.tmp-", f".{SECRET_KEY_FILE}.")


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
        base = base or default_base()
        if base.exists() and not base.is_dir():  # said here, not as whatever read failed first
            raise GitopsNodesError(
                f"the state directory {base} is not a folder (from --state-dir, or else "
                "GITOPS_NODES_STATE_DIR)"
            )
        return cls(base / project)

    @property
    def table(self) -> Path:
        return self.path / TABLE_FILE

    @property
    def owner_file(self) -> Path:
        return self.path / OWNER_FILE

    @contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Hold the apply lock; raise LockTimeout when another apply keeps it past timeout."""
        lock_path = self.path / LOCK_FILE
        deadline = time.monotonic() + timeout
        while True:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(lock_path, "a+")  # noqa: SIM115 - closed below, or by the with
            try:
                _flock(handle, lock_path, deadline, timeout)
            except BaseException:
                handle.close()
                raise
            # destroy removes the lock file while holding it: a lock taken on the removed
            # file locks nothing that a newcomer (opening a new file) would see. Again.
            if _same_file(handle, lock_path):
                break
            handle.close()
        with handle:
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


def secret_key(state: StateDir) -> bytes:
    """The key that secrets' digests are made with for this project, made on first use.

    Kept so that plan, apply and every later run digest a value alike (a rotation shows as a
    change, nothing else does); made atomically (a second process racing to make it reads
    the first one's), mode 0600, since with it a label's digest can be checked against
    guessed values.
    """
    path = state.path / SECRET_KEY_FILE
    for _ in range(3):
        try:
            return _read_secret_key(path)
        except FileNotFoundError:
            pass
        state.path.mkdir(parents=True, exist_ok=True)
        temporary = state.path / f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        try:
            os.link(temporary, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return _read_secret_key(path)


def _read_secret_key(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise GitopsNodesError(
            f"{path} is not a key (expected 64 hex digits); remove it and apply again: the "
            "nodes with secrets are then replaced once, since their digests change"
        )
    return key


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


def _flock(handle: Any, lock_path: Path, deadline: float, timeout: float) -> None:
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise LockTimeout(
                    f"{lock_path} is held by {holder}; another apply or destroy is "
                    f"running on this project (waited {timeout:g}s)"
                ) from None
            time.sleep(0.1)  # flock has no timed wait; poll the lock, not the work


def _same_file(handle: Any, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class Cleaned:
    """What clean_state did: the entries removed, and those kept with the reason."""

    removed: tuple[str, ...]
    kept: tuple[tuple[str, str], ...]


def clean_state(state: StateDir, lock_timeout: float) -> Cleaned:
    """Remove DESTROYED_STATE from the state directory, and the directory once empty.

    For `destroy`, after it removed everything the project owned. Entries a running process
    still uses are kept and reported: a running watch's clone and status (it would apply the
    repository again at its next poll; stop it first) and a running balancer's report.
    """
    if not state.path.is_dir():
        return Cleaned((), ())
    removed: list[str] = []
    kept: list[tuple[str, str]] = []
    with state.lock(lock_timeout):
        watcher = _watch_pid(state)
        for name in DESTROYED_STATE:
            path = state.path / name
            if name == LOCK_FILE or not (path.exists() or path.is_symlink()):
                continue
            if name in (WATCH_FILE, SOURCE_DIR) and watcher is not None:
                kept.append((name, f"a watch (pid {watcher}) still runs on this project"))
                continue
            if name == BALANCERS_DIR:
                alive = _clean_reports(path)
                if alive:
                    pids = ", ".join(str(pid) for pid in alive)
                    kept.append((name, f"balancers still running report there (pid {pids})"))
                    continue
            _remove(path)
            removed.append(name)
        for entry in sorted(state.path.iterdir()):
            if entry.name.startswith(_TEMPORARY_PREFIXES):
                _remove(entry)
                removed.append(entry.name)
            elif entry.name != LOCK_FILE and entry.name not in DESTROYED_STATE:
                why = KEPT_BY_DESTROY.get(entry.name, "not state gitops-nodes knows")
                kept.append((entry.name, why))
        if not kept:
            (state.path / LOCK_FILE).unlink(missing_ok=True)  # held: see StateDir.lock
            removed.append(LOCK_FILE)
    if not kept:
        # Something that arrived meanwhile (an apply that just started) stays, and so does
        # the folder holding it.
        with contextlib.suppress(OSError):
            state.path.rmdir()
    return Cleaned(tuple(removed), tuple(kept))


def _watch_pid(state: StateDir) -> int | None:
    """The pid of a watch running on this state directory, from its status file."""
    try:
        data = json.loads((state.path / WATCH_FILE).read_bytes())
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if pid != os.getpid() and _alive(pid) else None


def _clean_reports(folder: Path) -> list[int]:
    """Remove the reports of balancers that are gone; the pids of those still running."""
    alive = []
    for path in sorted(folder.glob("*.json")):
        try:
            pid = int(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            pid = None
        if pid is not None and pid != os.getpid() and _alive(pid):
            alive.append(pid)
        else:
            path.unlink(missing_ok=True)
    if not alive:
        _remove(folder)
    return alive


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
