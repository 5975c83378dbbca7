"""Where the spec comes from: a Git branch (committed content only) or a local work tree.

A source answers one question, "what is the spec now?", with a `Revision`: an id that
changes exactly when the content does, and a folder holding that content. `poll()` blocks
(git fetches, files are hashed): call it from a worker thread, one poll at a time per source.
`changes(stop)` is the push side: it yields once per burst of changes for a work tree, and
never for Git (polling on an interval and the webhook drive a Git source).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlsplit

from gitops_nodes.errors import GitopsNodesError

__all__ = [
    "GitSource",
    "Revision",
    "Source",
    "SourceError",
    "TreeSource",
    "open_source",
]

DEFAULT_FETCH_TIMEOUT = 60.0
WORK_TREE_SUMMARY = "work tree"

# Never part of the spec, in a work tree: version control, caches, editor scratch files.
# The hash in TreeSource.poll() and the watch filter in TreeSource.changes() share these,
# so a change that wakes the loop is always a change that the id shows, and vice versa.
_IGNORED_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
_IGNORED_SUFFIXES = (".swp", ".swo", ".swx", ".pyc", "~")
_IGNORED_PREFIXES = (".#",)

# Variables that would point our git calls at some other repository or index.
_GIT_LOCATION_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)
_SCP_LIKE = re.compile(r"^[^/@:\s]+@[^/:\s]+:")  # user@host:path, as ssh and git write it
_HOST_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*:")  # host:path, git's scp syntax
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
# What git says when a lock file is in its way ("Unable to create '....lock': File exists",
# "cannot lock ref ...", "Another git process seems to be running").
_LOCKED = re.compile(r"\.lock\b|cannot lock ref|another git process", re.IGNORECASE)

log = logging.getLogger("gitops_nodes.watch")


class SourceError(GitopsNodesError):
    """The repository or folder to follow cannot be read; the message says what to fix."""


@dataclass(frozen=True)
class Revision:
    """One version of the spec.

    `id` is the commit sha (40 hex) for Git, or "tree:" + a content digest for a work tree;
    `tree` is the folder holding the spec (the `--path` subfolder already applied);
    `summary` is the commit's subject line, or "work tree"; `author` and `committed_at`
    (seconds since the epoch) are the commit's, for status, and empty for a work tree.
    """

    id: str
    tree: Path
    summary: str
    author: str = field(default="", compare=False)
    committed_at: float | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, object]:
        """The revision as `/-/status` shows it."""
        return {
            "id": self.id,
            "summary": self.summary,
            "author": self.author or None,
            "committedAt": self.committed_at,
        }


class Source(Protocol):
    """What the watch loop follows: a Git branch or a local work tree."""

    @property
    def last(self) -> Revision | None:
        """The revision the last successful poll returned, if any."""
        ...

    def describe(self) -> str:
        """A short human name for logs and status, e.g. "file:///x#main:deploy"."""
        ...

    def poll(self) -> Revision:
        """Read the source now (blocking); raise SourceError when it cannot be read."""
        ...

    def at(self, revision_id: str) -> Revision | None:
        """An earlier revision by id, when the source can still produce it (blocking)."""
        ...

    def changes(self, stop: asyncio.Event) -> AsyncIterator[None]:
        """Yield once per burst of changes until stop is set."""
        ...


# ---------------------------------------------------------------------------------------
# Git


class GitSource:
    """Follows the committed content of one branch of a Git repository.

    `url` is anything `git fetch` accepts: a path, file://, ssh (also user@host:path) or
    https. Objects live in a bare repository under `workdir/repo.git`; each new commit is
    materialised, atomically, into `workdir/checkouts/<sha>/`, and the two newest checkouts
    are kept (the one just returned and the one before it). Git never prompts: give
    credentials through an SSH key, an agent or a credential helper.
    """

    def __init__(
        self,
        url: str,
        branch: str,
        path: str,
        workdir: Path,
        *,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
    ) -> None:
        if not url.strip():
            raise SourceError("the repository URL is empty; pass a Git URL or a folder")
        if url.startswith("-"):
            raise SourceError(f"repository URL {url!r} starts with '-'; pass a Git URL")
        _check_branch(branch)
        if fetch_timeout <= 0:
            raise SourceError(f"fetch timeout must be positive, got {fetch_timeout:g}s")
        self.url = url
        self.branch = branch
        self.path = _subpath(path)
        self.workdir = workdir.absolute()
        self.fetch_timeout = fetch_timeout
        self._last: Revision | None = None
        self._lock = threading.Lock()
        self._initialised = False

    @property
    def last(self) -> Revision | None:
        return self._last

    @property
    def git_dir(self) -> Path:
        return self.workdir / "repo.git"

    @property
    def checkouts(self) -> Path:
        return self.workdir / "checkouts"

    @property
    def _ref(self) -> str:
        return f"refs/remotes/source/{self.branch}"

    def describe(self) -> str:
        where = f"{_redact(self.url)}#{self.branch}"
        return where if self.path == "." else f"{where}:{self.path}"

    def poll(self) -> Revision:
        """Fetch the branch now; materialise its commit when it changed since the last poll."""
        with self._lock:
            self._ensure_repository()
            self._fetch()
            sha, summary = self._head()
            last = self._last
            if last is not None and last.id == sha:
                return last
            self._check_path(sha, summary)
            root = self._materialise(sha)
            author, committed_at = self._author(sha)
            revision = Revision(
                id=sha,
                tree=_join(root, self.path),
                summary=summary,
                author=author,
                committed_at=committed_at,
            )
            self._prune(keep={sha} | ({last.id} if last is not None else set()))
            self._last = revision
            return revision

    def at(self, revision_id: str) -> Revision | None:
        """A commit fetched before, by id: the last good one, to heal from after a restart.
        None when this repository does not have it (any more)."""
        sha = revision_id
        if not _HEX40.match(sha):
            return None
        with self._lock:
            self._ensure_repository()
            try:
                summary = self._git("log", "-1", "--format=%s", sha, "--").strip()
                self._check_path(sha, summary)
                root = self._materialise(sha)
                author, committed_at = self._author(sha)
            except SourceError:
                return None
            return Revision(
                id=sha,
                tree=_join(root, self.path),
                summary=summary or "-",
                author=author,
                committed_at=committed_at,
            )

    async def changes(self, stop: asyncio.Event) -> AsyncGenerator[None, None]:
        """Never yields: a Git source is polled. Returns once stop is set."""
        await stop.wait()
        return
        yield  # makes this an async generator, like TreeSource.changes

    # -- steps of a poll ------------------------------------------------------------------

    def _ensure_repository(self) -> None:
        if self._initialised:
            return
        try:
            self.checkouts.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SourceError(f"cannot create {self.checkouts}: {error.strerror}") from error
        if not (self.git_dir / "HEAD").is_file():
            self._git("init", "--quiet", "--bare", str(self.git_dir), git_dir=False)
        for leftover in self.checkouts.glob(".tmp-*"):  # from a poll that was interrupted
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.workdir.glob(".index-*"):  # a checkout's index, and its lock
            leftover.unlink(missing_ok=True)
        self.clear_stale_locks()
        self._initialised = True

    def clear_stale_locks(self) -> list[Path]:
        """Remove the lock files in our clone that no live git process holds; the ones removed.

        A git killed mid-fetch (with watch, or by the machine going down) leaves its lock
        (`refs/remotes/source/<branch>.lock`, `packed-refs.lock`, `shallow.lock`, ...), and
        every later fetch then fails on it. Our git runs one at a time under self._lock, so
        a lock is stale unless another process is running git on this clone right now.
        """
        if _git_running_on(self.git_dir):
            return []
        removed = []
        for lock in sorted(self.git_dir.rglob("*.lock")):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
                removed.append(lock)
                log.warning(
                    "removed %s, a git lock file no running git holds (left by a git that "
                    "was killed)",
                    lock,
                )
        return removed

    def _fetch(self) -> None:
        result = self._run_fetch()
        if result.returncode != 0 and _LOCKED.search(result.stderr) and self.clear_stale_locks():
            result = self._run_fetch()  # the lock was a leftover: once more without it
        if result.returncode != 0:
            raise SourceError(
                f"cannot fetch branch {self.branch!r} from {_redact(self.url)}: "
                f"{self._stderr(result)}. Check the URL and the branch name, and that this "
                "machine can reach the repository without prompting (SSH key, agent or "
                "credential helper)"
            )

    def _run_fetch(self) -> subprocess.CompletedProcess[str]:
        return _run_git(
            [
                "--git-dir",
                str(self.git_dir),
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-recurse-submodules",
                self.url,
                f"+refs/heads/{self.branch}:{self._ref}",
            ],
            timeout=self.fetch_timeout,
            what=f"fetching {self.describe()}",
        )

    def _author(self, sha: str) -> tuple[str, float | None]:
        """A commit's author (name only: an address is nobody's business on a status page)
        and its commit time."""
        out = self._git("log", "-1", "--format=%an%x00%ct", sha, "--")
        name, _, stamp = out.rstrip("\n").partition("\0")
        return name.strip(), float(stamp) if stamp.strip().isdigit() else None

    def _head(self) -> tuple[str, str]:
        out = self._git("log", "-1", "--format=%H%x00%s", self._ref, "--")
        sha, _, subject = out.rstrip("\n").partition("\0")
        if not _HEX40.match(sha):
            raise SourceError(
                f"git returned {sha!r} as the commit of {self.describe()}; expected a SHA-1. "
                f"Remove {self.workdir} and try again"
            )
        return sha, subject.strip() or "(no subject)"

    def _check_path(self, sha: str, summary: str) -> None:
        if self.path == ".":
            return
        listing = self._git("ls-tree", sha, "--", self.path)
        kind = listing.split(maxsplit=2)[1] if listing.strip() else None
        if kind == "tree":
            return
        what = "has no folder" if kind is None else "has a file, not a folder, at"
        raise SourceError(
            f"commit {sha[:12]} ({summary!r}) of {_redact(self.url)} branch {self.branch!r} "
            f"{what} {self.path!r}; fix --path or commit the spec there"
        )

    def _materialise(self, sha: str) -> Path:
        """Write exactly the committed files of sha into checkouts/<sha>, atomically."""
        final = self.checkouts / sha
        if final.is_dir():  # complete by construction: only a rename creates it
            os.utime(final)
            return final
        token = secrets.token_hex(4)
        staging = self.checkouts / f".tmp-{sha[:12]}-{token}"
        index = self.workdir / f".index-{token}"
        try:
            staging.mkdir()
            self._git(
                "--work-tree",
                str(staging),
                "read-tree",
                "--reset",
                "-u",
                sha,
                env={"GIT_INDEX_FILE": str(index)},
            )
            try:
                staging.rename(final)
            except OSError:
                if not final.is_dir():  # not someone else's identical checkout: a real error
                    raise
        except OSError as error:
            raise SourceError(
                f"cannot write commit {sha[:12]} into {final}: {error.strerror or error}"
            ) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                index.unlink()
        return final

    def _prune(self, keep: set[str]) -> None:
        """Remove checkouts other than keep; without a previous one, keep the newest other."""
        others = [
            entry
            for entry in self.checkouts.iterdir()
            if entry.is_dir() and _HEX40.match(entry.name) and entry.name not in keep
        ]
        if len(keep) < 2 and others:
            others.sort(key=lambda entry: entry.stat().st_mtime_ns)
            others.pop()
        for entry in others:
            shutil.rmtree(entry, ignore_errors=True)

    # -- running git ----------------------------------------------------------------------

    def _git(self, *args: str, git_dir: bool = True, env: dict[str, str] | None = None) -> str:
        argv = (["--git-dir", str(self.git_dir)] if git_dir else []) + list(args)
        result = _run_git(argv, timeout=self.fetch_timeout, what=f"git {args[0]}", env=env)
        if result.returncode != 0:
            raise SourceError(
                f"git {args[0]} failed in {self.workdir} for {self.describe()}: "
                f"{self._stderr(result)}"
            )
        return result.stdout

    def _stderr(self, result: subprocess.CompletedProcess[str]) -> str:
        text = _trim(result.stderr) or f"exit status {result.returncode}"
        return text.replace(self.url, _redact(self.url)) if self.url else text


def _run_git(
    argv: Sequence[str],
    *,
    timeout: float,
    what: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run git without a terminal (it cannot prompt) and kill its whole group on timeout."""
    full_env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    full_env["GIT_TERMINAL_PROMPT"] = "0"
    full_env.update(env or {})
    command = ["git", *argv]
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            start_new_session=True,  # no controlling terminal: ssh cannot prompt either
        )
    except FileNotFoundError as error:
        raise SourceError("git is not installed or not on PATH; install git") from error
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise SourceError(
            f"{what} did not finish within {timeout:g}s; check the network and the URL, "
            "or raise the fetch timeout"
        ) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _git_running_on(git_dir: Path) -> bool:
    """Whether a live process runs git on git_dir: ours pass `--git-dir <git_dir>` (and
    the helpers git starts for a fetch have it as their working directory). Read from /proc;
    where there is none, every lock counts as held, and is left alone."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    wanted = str(git_dir)
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not argv or not os.path.basename(argv[0]).startswith(b"git"):
                continue
            if wanted.encode() in argv or os.readlink(entry / "cwd") == wanted:
                return True
        except OSError:
            continue  # gone meanwhile, or another user's: not a git of ours
    return False


def _check_branch(branch: str) -> None:
    bad = (
        not branch
        or branch.startswith(("-", "/", "."))
        or branch.endswith(("/", ".", ".lock"))
        or ".." in branch
        or "@{" in branch
        or "//" in branch
        or "/." in branch
        or any(c in branch for c in " ~^:?*[\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in branch)
    )
    if bad:
        raise SourceError(f"{branch!r} is not a valid branch name; pass e.g. --branch main")


def _redact(url: str) -> str:
    """The URL without secrets: an https user (often a token) or any password become ***."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    if parts.scheme in ("http", "https"):
        safe = "***"
    else:
        user, colon, _ = userinfo.partition(":")
        safe = f"{user}:***" if colon else user
    return url.replace(f"{userinfo}@{host}", f"{safe}@{host}", 1)


def _trim(stderr: str, *, lines: int = 6, chars: int = 600) -> str:
    kept = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and not line.lstrip().startswith("hint:")
    ]
    text = " ".join(kept[-lines:])
    return text if len(text) <= chars else "…" + text[-chars:]


# ---------------------------------------------------------------------------------------
# Work tree


class TreeSource:
    """Follows a local folder as it is on disk, uncommitted changes included.

    The revision id is "tree:" + a digest of every regular file's relative path and bytes
    (version-control folders, caches and editor scratch files excepted). Files are re-read
    only when their size or times change.
    """

    def __init__(self, path: Path, *, debounce_ms: int = 1_000, step_ms: int = 100) -> None:
        self.path = path.expanduser().absolute()
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self._last: Revision | None = None
        self._digests: dict[str, tuple[tuple[int, int, int, int], bytes]] = {}

    @property
    def last(self) -> Revision | None:
        return self._last

    def at(self, revision_id: str) -> Revision | None:
        """A work tree keeps no history: only its current content is ever available."""
        return None

    def describe(self) -> str:
        return str(self.path)

    def poll(self) -> Revision:
        """Hash the folder now; the same Revision as last time when nothing changed."""
        if not self.path.is_dir():
            what = "is not a folder" if self.path.exists() else "does not exist"
            raise SourceError(f"{self.path} {what}; pass the folder that holds the spec")
        digest = _tree_digest(self.path, self._digests)
        revision_id = "tree:" + digest[:16]
        last = self._last
        if last is not None and last.id == revision_id:
            return last
        self._last = Revision(id=revision_id, tree=self.path, summary=WORK_TREE_SUMMARY)
        return self._last

    async def changes(self, stop: asyncio.Event) -> AsyncGenerator[None, None]:
        """Yield once per debounced burst of file changes; return once stop is set.

        A burst ends after step_ms without a change, or debounce_ms after it began.
        """
        import watchfiles  # the Rust extension loads only for work trees

        root = self.path

        def keep(_change: watchfiles.Change, changed: str) -> bool:
            try:
                relative = Path(changed).relative_to(root)
            except ValueError:
                return True
            return not _ignored(relative.parts)

        # Our own event for watchfiles: a cancelled wait sets it, and must not set `stop`,
        # which belongs to the caller.
        inner = asyncio.Event()

        async def relay() -> None:
            await stop.wait()
            inner.set()

        relay_task = asyncio.create_task(relay())
        try:
            watcher = watchfiles.awatch(
                root,
                watch_filter=keep,
                debounce=self.debounce_ms,
                step=self.step_ms,
                stop_event=inner,
            )
            try:
                async for _ in watcher:
                    yield
            except FileNotFoundError as error:
                raise SourceError(
                    f"cannot watch {root}: it does not exist; create it or pass another folder"
                ) from error
        finally:
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task


def _ignored(parts: Sequence[str]) -> bool:
    if any(part in _IGNORED_DIRS for part in parts[:-1]):
        return True
    if not parts:
        return False
    name = parts[-1]
    return (
        name in _IGNORED_DIRS
        or name.endswith(_IGNORED_SUFFIXES)
        or name.startswith(_IGNORED_PREFIXES)
    )


def _tree_digest(root: Path, cache: dict[str, tuple[tuple[int, int, int, int], bytes]]) -> str:
    """sha256 over (relative path, sha256 of bytes) of every regular file, sorted by path.

    cache maps a relative path to (stat key, digest); a file whose stat key is unchanged
    and was last modified over 2 s ago (so no same-tick rewrite can hide) is not re-read.
    """
    entries: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    now_ns = time.time_ns()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if name not in _IGNORED_DIRS]
        for name in filenames:
            if _ignored((name,)):
                continue
            full = os.path.join(dirpath, name)
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            try:
                info = os.stat(full)
            except FileNotFoundError:  # vanished meanwhile, or a dangling symlink
                entries.append((relative, b"missing"))
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            key = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
            cached = cache.get(relative)
            if cached is not None and cached[0] == key:
                digest = cached[1]
            else:
                try:
                    digest = _file_digest(full)
                except FileNotFoundError:
                    entries.append((relative, b"missing"))
                    continue
                except OSError as error:
                    raise SourceError(
                        f"cannot read {full}: {error.strerror or error}; fix its permissions "
                        "or move it out of the folder"
                    ) from error
                if now_ns - info.st_mtime_ns > 2_000_000_000:
                    cache[relative] = (key, digest)
            seen.add(relative)
            entries.append((relative, digest))
    for stale in cache.keys() - seen:
        del cache[stale]
    total = hashlib.sha256()
    for relative, digest in sorted(entries):
        total.update(relative.encode("utf-8", "surrogateescape"))
        total.update(b"\0")
        total.update(digest)
        total.update(b"\n")
    return total.hexdigest()


def _file_digest(path: str) -> bytes:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


# ---------------------------------------------------------------------------------------
# Choosing


def open_source(repo: str, branch: str, path: str, state_dir: Path) -> Source:
    """The source for `gitops-nodes watch <repo> --branch --path`.

    - A URL-like repo (it contains "://", or reads user@host:path) is a Git remote: its
      branch's committed content is followed, fetched into state_dir / "source".
    - Otherwise an existing plain folder is followed as a work tree, uncommitted changes
      included, and `branch` is not used: TreeSource(folder / path).
      To follow a local repository's committed branch instead, pass file:///abs/path.
    - An existing bare repository folder is followed as Git (it has no work tree).
    - Anything else that git reads as host:path is a Git remote too; otherwise SourceError.
    """
    subpath = _subpath(path)
    workdir = state_dir / "source"
    if "://" in repo or _SCP_LIKE.match(repo):
        return GitSource(repo, branch, subpath, workdir)
    folder = Path(repo).expanduser()
    if folder.is_dir():
        if _is_bare_repository(folder):
            return GitSource(folder.resolve().as_uri(), branch, subpath, workdir)
        return TreeSource(_join(folder.resolve(), subpath))
    if folder.exists():
        raise SourceError(f"{repo} is a file; pass a folder, or a Git URL to follow")
    if _HOST_PATH.match(repo) and not repo.startswith((".", "~")):
        return GitSource(repo, branch, subpath, workdir)
    raise SourceError(
        f"{repo} is neither an existing folder nor a Git URL; pass a work tree folder, or a "
        "URL such as https://host/org/repo.git, git@host:org/repo.git or file:///abs/path"
    )


def _is_bare_repository(folder: Path) -> bool:
    return (
        (folder / "HEAD").is_file()
        and (folder / "objects").is_dir()
        and (folder / "refs").is_dir()
        and not (folder / ".git").exists()
    )


def _subpath(path: str) -> str:
    """The --path folder as a clean relative POSIX path; "." for the repository's root."""
    cleaned = PurePosixPath(path.strip() or ".")
    if cleaned.is_absolute() or ".." in cleaned.parts:
        raise SourceError(
            f"--path {path!r} must be a folder inside the repository, relative to its root "
            "(e.g. deploy), without '..'"
        )
    return str(cleaned)


def _join(root: Path, subpath: str) -> Path:
    return root if subpath == "." else root / subpath
