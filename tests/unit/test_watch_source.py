"""Following the repo: GitSource against real repositories made with the git CLI in temp
dirs, TreeSource against a real folder watched with watchfiles, and open_source's choice."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.errors import GitopsNodesError
from gitops_nodes.watch import source as source_module
from gitops_nodes.watch.source import (
    GitSource,
    Revision,
    SourceError,
    TreeSource,
    open_source,
)
from tests.waiting import wait_until

IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}
SPEC = "kind: node\nname: {name}\n"


@pytest.fixture(autouse=True)
def hermetic_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the tests' git nor GitSource's reads the user's or the system's config."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


class Origin:
    """A work tree repository made with the git CLI; the repo GitSource follows."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.git("init", "--quiet", "-b", "main", str(root))

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def git(self, *args: str) -> str:
        env = {**os.environ, **IDENTITY}
        done = subprocess.run(
            ["git", *args], cwd=self.root if self.root.exists() else None, env=env,
            capture_output=True, text=True, check=True, timeout=10,
        )  # fmt: skip
        return done.stdout.strip()

    def write(self, files: dict[str, str]) -> None:
        for relative, text in files.items():
            path = self.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def commit(self, files: dict[str, str], message: str) -> str:
        self.write(files)
        self.git("add", "--all")
        self.git("commit", "--quiet", "-m", message)
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    repo = Origin(tmp_path / "origin")
    repo.commit({"deploy/node.yaml": SPEC.format(name="v1")}, "first spec")
    return repo


def _source(origin: Origin, tmp_path: Path, **kwargs: Any) -> GitSource:
    options: dict[str, Any] = {"branch": "main", "path": "deploy"} | kwargs
    return GitSource(origin.url, workdir=tmp_path / "state" / "source", **options)


def _checkouts(source: GitSource) -> set[str]:
    return {entry.name for entry in source.checkouts.iterdir()}


# --- GitSource ----------------------------------------------------------------------------


def test_poll_returns_the_branch_commit_and_its_spec_folder(origin: Origin, tmp_path: Path) -> None:
    source = _source(origin, tmp_path)
    assert source.last is None

    revision = source.poll()

    sha = origin.git("rev-parse", "HEAD")
    tree = source.checkouts / sha / "deploy"
    assert revision == Revision(id=sha, tree=tree, summary="first spec")
    # Its author (by name: an address is not shown) and commit time, for the console.
    assert revision.author == origin.git("log", "-1", "--format=%an")
    assert revision.committed_at == float(origin.git("log", "-1", "--format=%ct"))
    assert revision.to_json()["author"] and "@" not in str(revision.to_json())
    assert (revision.tree / "node.yaml").read_text() == SPEC.format(name="v1")
    assert source.last is revision
    assert source.describe() == f"{origin.url}#main:deploy"
    assert issubclass(SourceError, GitopsNodesError)


def test_uncommitted_edits_in_the_origin_are_not_seen(origin: Origin, tmp_path: Path) -> None:
    source = _source(origin, tmp_path)
    first = source.poll()

    origin.write({"deploy/node.yaml": SPEC.format(name="edited"), "deploy/new.yaml": "x: 1\n"})
    origin.git("add", "deploy/new.yaml")  # staged but not committed: still not the branch

    again = source.poll()
    assert again is first
    assert (again.tree / "node.yaml").read_text() == SPEC.format(name="v1")
    assert not (again.tree / "new.yaml").exists()


def test_new_commits_are_seen_and_two_checkouts_are_kept(origin: Origin, tmp_path: Path) -> None:
    source = _source(origin, tmp_path)
    first = source.poll()

    second_sha = origin.commit({"deploy/node.yaml": SPEC.format(name="v2")}, "second spec")
    second = source.poll()
    assert second.id == second_sha != first.id
    assert second.summary == "second spec"
    assert (second.tree / "node.yaml").read_text() == SPEC.format(name="v2")
    assert (first.tree / "node.yaml").read_text() == SPEC.format(name="v1")  # still there
    assert _checkouts(source) == {first.id, second.id}

    third_sha = origin.commit({"deploy/other.yaml": "x: 3\n"}, "third spec")
    third = source.poll()
    assert third.id == third_sha
    assert _checkouts(source) == {second.id, third.id}  # the oldest went, no leftovers
    assert sorted(p.name for p in source.workdir.iterdir()) == ["checkouts", "repo.git"]


def test_an_unchanged_branch_is_fetched_but_not_materialised_again(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _source(origin, tmp_path)
    first = source.poll()
    checkout = source.checkouts / first.id
    before = checkout.stat()

    calls: list[str] = []
    real_run_git: Callable[..., subprocess.CompletedProcess[str]] = source_module._run_git

    def spy(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(next(arg for arg in argv[2:] if not arg.startswith("-")))
        return real_run_git(argv, **kwargs)

    monkeypatch.setattr(source_module, "_run_git", spy)
    again = source.poll()

    assert again is first
    assert calls == ["fetch", "log"]
    after = checkout.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_the_repository_root_can_be_the_spec_folder(origin: Origin, tmp_path: Path) -> None:
    source = _source(origin, tmp_path, path="")
    revision = source.poll()
    assert revision.tree == source.checkouts / revision.id
    assert (revision.tree / "deploy" / "node.yaml").is_file()
    assert source.describe() == f"{origin.url}#main"


def test_a_stale_ref_lock_from_a_killed_fetch_is_cleared_and_the_next_commit_seen(
    origin: Origin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _source(origin, tmp_path)
    source.poll()
    lock = source.git_dir / "refs" / "remotes" / "source" / "main.lock"
    lock.write_text("")  # what a fetch killed with SIGKILL leaves behind
    (source.git_dir / "packed-refs.lock").write_text("")
    sha = origin.commit({"deploy/node.yaml": SPEC.format(name="v2")}, "after the lock")

    with caplog.at_level("WARNING", logger="gitops_nodes.watch"):
        assert source.poll().id == sha
    assert not lock.exists() and not (source.git_dir / "packed-refs.lock").exists()
    assert "main.lock" in caplog.text


def test_stale_locks_are_cleared_when_watch_starts(origin: Origin, tmp_path: Path) -> None:
    _source(origin, tmp_path).poll()
    first = _source(origin, tmp_path)
    shallow = first.git_dir / "shallow.lock"
    shallow.write_text("")
    _source(origin, tmp_path).poll()  # a new process: its first poll clears it
    assert not shallow.exists()


def test_a_lock_a_running_git_holds_is_left_alone(origin: Origin, tmp_path: Path) -> None:
    source = _source(origin, tmp_path)
    source.poll()
    lock = source.git_dir / "index.lock"
    lock.write_text("")
    running = subprocess.Popen(  # a git at work on the clone (it waits on its stdin)
        ["git", "--git-dir", str(source.git_dir), "cat-file", "--batch"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    cmdline = Path(f"/proc/{running.pid}/cmdline")
    try:
        # Until the child has exec'd git, its command line is still this Python's.
        wait_until(lambda: str(source.git_dir).encode() in cmdline.read_bytes(), "git to run")
        assert source.clear_stale_locks() == []
        assert lock.exists()
    finally:
        running.communicate(timeout=10)
    assert source.clear_stale_locks() == [lock]


def test_a_wrong_branch_is_reported_with_gits_reason(origin: Origin, tmp_path: Path) -> None:
    source = _source(origin, tmp_path, branch="nope")
    with pytest.raises(SourceError, match="branch 'nope'") as caught:
        source.poll()
    assert "couldn't find remote ref refs/heads/nope" in str(caught.value)
    assert source.last is None


def test_a_wrong_url_is_reported_with_gits_reason(tmp_path: Path) -> None:
    url = (tmp_path / "missing").as_uri()
    source = GitSource(url, "main", "deploy", tmp_path / "state")
    with pytest.raises(SourceError, match="does not appear to be a git repository") as caught:
        source.poll()
    assert url in str(caught.value)


def test_a_missing_spec_folder_names_the_commit_and_the_path(
    origin: Origin, tmp_path: Path
) -> None:
    sha = origin.git("rev-parse", "HEAD")
    source = _source(origin, tmp_path, path="nope/deeper")
    with pytest.raises(SourceError, match=rf"commit {sha[:12]} \('first spec'\)") as caught:
        source.poll()
    assert "has no folder 'nope/deeper'" in str(caught.value)
    assert _checkouts(source) == set()  # nothing was materialised

    as_file = _source(origin, tmp_path, path="deploy/node.yaml")
    with pytest.raises(SourceError, match=r"has a file, not a folder, at 'deploy/node\.yaml'"):
        as_file.poll()


@pytest.mark.parametrize(
    ("branch", "path", "message"),
    [
        ("main:evil", "deploy", "not a valid branch name"),
        ("--upload-pack=x", "deploy", "not a valid branch name"),
        ("main", "../outside", "must be a folder inside the repository"),
        ("main", "/abs", "must be a folder inside the repository"),
    ],
)
def test_bad_arguments_are_refused_before_running_git(
    tmp_path: Path, branch: str, path: str, message: str
) -> None:
    with pytest.raises(SourceError, match=message):
        GitSource("file:///x", branch, path, tmp_path)


def test_a_hanging_git_is_killed_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "git"
    child = tmp_path / "child.pid"
    # git's own children (ssh, remote helpers) must die with it: the fake forks a sleeper
    fake.write_text(f"#!/bin/sh\n{shutil.which('sleep')} 30 &\necho $! > {child}\nwait\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    # 1.5 s, not less: on a busy machine the fake's shell must have forked its sleeper and
    # written its pid before the timeout kills it, or there is no child to look for.
    source = GitSource("file:///x", "main", "deploy", tmp_path / "state", fetch_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"did not finish within 1.5s"):
        source.poll()
    # Not by waiting for the sleeper's 30 s: it holds git's pipes open, so a kill that
    # missed it would have held poll() until it ended by itself.
    assert time.monotonic() - started < 20
    # SIGKILL takes effect asynchronously: the sleeper has closed its end of git's pipes by
    # now, but on a busy machine it may not yet be a zombie for a moment after.
    sleeper = int(child.read_text())
    wait_until(lambda: _gone_or_zombie(sleeper), "git's child to be killed with it", 5.0)

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SourceError, match="git is not installed"):
        GitSource("file:///x", "main", "deploy", tmp_path / "state2").poll()


def _gone_or_zombie(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_credentials_never_show_in_descriptions(tmp_path: Path) -> None:
    token = GitSource("https://x-access-token:s3cret@host/org/r.git", "main", ".", tmp_path)
    assert token.describe() == "https://***@host/org/r.git#main"
    bare_token = GitSource("https://s3cret@host/org/r.git", "main", ".", tmp_path)
    assert "s3cret" not in bare_token.describe()
    ssh = GitSource("ssh://git@host/org/r.git", "main", "deploy", tmp_path)
    assert ssh.describe() == "ssh://git@host/org/r.git#main:deploy"


def test_git_changes_never_yield_and_end_on_stop(tmp_path: Path) -> None:
    source = GitSource("file:///x", "main", "deploy", tmp_path)

    async def scenario() -> list[None]:
        stop = asyncio.Event()
        stop.set()
        return [item async for item in source.changes(stop)]

    assert asyncio.run(asyncio.wait_for(scenario(), 2)) == []


# --- TreeSource ---------------------------------------------------------------------------


def test_tree_source_sees_uncommitted_changes_and_only_real_ones(origin: Origin) -> None:
    source = TreeSource(origin.root / "deploy")
    first = source.poll()
    assert first.id.startswith("tree:")
    assert first.tree == origin.root / "deploy"
    assert first.summary == "work tree"
    assert source.poll() is first  # nothing changed

    (origin.root / "deploy" / "node.yaml").write_text(SPEC.format(name="uncommitted"))
    second = source.poll()
    assert second.id != first.id

    (origin.root / "deploy" / ".git").mkdir()
    (origin.root / "deploy" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (origin.root / "deploy" / ".node.yaml.swp").write_text("scratch")
    assert source.poll() is second  # version control and editor files are not the spec

    (origin.root / "deploy" / "sub").mkdir()
    (origin.root / "deploy" / "sub" / "more.yaml").write_text("x: 1\n")
    third = source.poll()
    assert third.id not in (first.id, second.id)

    (origin.root / "deploy" / "sub" / "more.yaml").unlink()
    assert source.poll().id == second.id  # the id is the content, not the history


def test_tree_source_sees_a_rewrite_that_keeps_size_and_mtime(tmp_path: Path) -> None:
    spec = tmp_path / "node.yaml"
    spec.write_text("name: aaaa\n")
    os.utime(spec, ns=(1_000_000_000, 1_000_000_000))  # old enough to be cached
    source = TreeSource(tmp_path)
    first = source.poll()
    assert source.poll() is first

    spec.write_text("name: bbbb\n")
    os.utime(spec, ns=(1_000_000_000, 1_000_000_000))
    assert source.poll().id != first.id


def test_tree_source_reports_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        TreeSource(tmp_path / "nope").poll()


def test_tree_changes_yield_once_per_burst_and_end_on_stop(tmp_path: Path) -> None:
    folder = tmp_path / "tree"
    (folder / ".git").mkdir(parents=True)
    source = TreeSource(folder, debounce_ms=1_000, step_ms=50)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        events = source.changes(stop)
        pending = asyncio.ensure_future(anext(events))
        # The watcher starts inside the first anext(), which has not run yet: write, then
        # wait on the iterator, until it reports a change.
        deadline = loop.time() + 5
        await asyncio.wait({pending}, timeout=0.05)
        while not pending.done():
            assert loop.time() < deadline, "no change reported within 5 s"
            (folder / "probe.yaml").write_text("probe: 1\n")
            await asyncio.wait({pending}, timeout=0.3)
        pending.result()

        pending = asyncio.ensure_future(anext(events))
        for index in range(20):  # one save of many files
            (folder / f"node{index}.yaml").write_text(SPEC.format(name=index))
        await asyncio.wait_for(pending, 5)

        pending = asyncio.ensure_future(anext(events))
        (folder / ".git" / "index").write_text("not the spec")
        done, _ = await asyncio.wait({pending}, timeout=0.4)
        assert not done, "a second event: the burst was split, or .git was not ignored"

        stop.set()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(pending, 5)

    asyncio.run(scenario())


def test_cancelling_a_wait_on_changes_leaves_the_callers_stop_alone(tmp_path: Path) -> None:
    source = TreeSource(tmp_path)

    async def scenario() -> bool:
        stop = asyncio.Event()
        events = source.changes(stop)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(events), 0.1)
        await events.aclose()
        return stop.is_set()

    assert asyncio.run(scenario()) is False


def test_tree_changes_on_a_missing_folder_is_a_source_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        await anext(TreeSource(tmp_path / "nope").changes(asyncio.Event()))

    with pytest.raises(SourceError, match="does not exist"):
        asyncio.run(asyncio.wait_for(scenario(), 5))


# --- open_source --------------------------------------------------------------------------


def test_open_source_follows_plain_folders_as_work_trees(origin: Origin, tmp_path: Path) -> None:
    source = open_source(str(origin.root), "main", "deploy", tmp_path / "state")
    assert isinstance(source, TreeSource)
    assert source.path == origin.root / "deploy"


def test_open_source_follows_urls_as_git(origin: Origin, tmp_path: Path) -> None:
    state = tmp_path / "state"
    source = open_source(origin.url, "main", "deploy", state)
    assert isinstance(source, GitSource)
    assert source.workdir == state / "source"
    assert source.poll().id == origin.git("rev-parse", "HEAD")

    for url in ("https://host/org/r.git", "git@host:org/r.git", "host.example:org/r.git"):
        assert isinstance(open_source(url, "main", "deploy", state), GitSource), url


def test_open_source_follows_a_bare_repository_as_git(origin: Origin, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    origin.git("clone", "--quiet", "--bare", str(origin.root), str(bare))
    source = open_source(str(bare), "main", "deploy", tmp_path / "state")
    assert isinstance(source, GitSource)
    assert source.url == bare.as_uri()


def test_open_source_refuses_what_it_cannot_follow(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither an existing folder nor a Git URL"):
        open_source(str(tmp_path / "nope"), "main", "deploy", tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SourceError, match="is a file"):
        open_source(str(tmp_path / "file.txt"), "main", "deploy", tmp_path)
