"""The bad-input corpus: every case a repository and a command line, run as a user runs it.

Each folder under cases/ is one case:

    cases/<case-name>/
      repo/        the repository as files (optional; an empty repository when absent)
      make.py      optional: `def make(repo: pathlib.Path) -> None`, run on the temporary copy
                   of repo/, for what git cannot hold (FIFOs, symlink loops, modes, huge or
                   generated files)
      expect.toml  command = ["validate"]   gitops-nodes' arguments; the repository's path is
                                            appended unless an argument holds "{repo}"
                   exit = 1                 the exit code expected
                   output = ["..."]         substrings that must all appear in stdout + stderr
                   absent = ["..."]         optional: substrings that must not appear
                   env = {NAME = "value"}   optional: extra environment variables
                   append = false           optional: never append the repository's path

In arguments and env values, "{repo}" is the temporary repository and "{tmp}" a temporary
folder beside it (outside the repository). Each case runs `python3 -m gitops_nodes` in its
own process, with a deadline and a memory limit, so a hang or a blow-up fails that case
instead of the run; no case may print a Python traceback.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

CASES = Path(__file__).parent / "cases"
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0  # seconds for one case's command
MEMORY = 2 * 2**30  # bytes of address space for one case's command
WORKERS = max(1, min(4, os.cpu_count() or 1))  # cases run at once
_KEYS = {"command", "exit", "output", "absent", "env", "append"}


@dataclass(frozen=True)
class Expectation:
    """What one case's expect.toml asks for."""

    command: list[str]
    exit: int
    output: list[str]
    absent: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    append: bool = True


def _expectation(case: Path) -> Expectation:
    data: dict[str, Any] = tomllib.loads((case / "expect.toml").read_text())
    unknown = set(data) - _KEYS
    assert not unknown, f"{case.name}/expect.toml: unknown keys {sorted(unknown)}"
    return Expectation(
        command=list(data["command"]),
        exit=int(data["exit"]),
        output=list(data.get("output", [])),
        absent=list(data.get("absent", [])),
        env=dict(data.get("env", {})),
        append=bool(data.get("append", True)),
    )


def _cases() -> list[Path]:
    return sorted(path for path in CASES.iterdir() if (path / "expect.toml").is_file())


def _make(case: Path, repo: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        f"case_{case.name.replace('-', '_')}", case / "make.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make(repo)


def _substitute(text: str, repo: Path, tmp: Path) -> str:
    return text.replace("{repo}", str(repo)).replace("{tmp}", str(tmp))


# The child limits its own memory before it runs the command: a preexec_fn is not safe in a
# process with threads, and the cases run from a pool of them.
_CHILD = (
    "import resource, runpy; "
    f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY}, {MEMORY})); "
    "runpy.run_module('gitops_nodes', run_name='__main__', alter_sys=True)"
)


@dataclass(frozen=True)
class Run:
    """One case's command as it ran: its arguments, folders, exit code and output."""

    args: list[str]
    repo: Path
    tmp: Path
    code: int | None  # None: killed at the deadline
    output: str


def run_case(case: Path, folder: Path) -> Run:
    """Lay out the case's repository in folder and run its command there."""
    expect = _expectation(case)
    repo, tmp = folder / "repo", folder / "tmp"
    tmp.mkdir()
    if (case / "repo").is_dir():
        shutil.copytree(case / "repo", repo, symlinks=True)
    else:
        repo.mkdir()
    if (case / "make.py").is_file():
        _make(case, repo)
    args = [_substitute(arg, repo, tmp) for arg in expect.command]
    if expect.append and not any("{repo}" in arg for arg in expect.command):
        args.append(str(repo))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GITOPS_NODES_STATE_DIR": str(tmp / "state"),
        "GITOPS_NODES_PROJECT": "gitops-nodes-inputs",
        **{name: _substitute(value, repo, tmp) for name, value in expect.env.items()},
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args],
        cwd=tmp,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a deadline ends all of it
    )
    try:
        out, _ = child.communicate(timeout=TIMEOUT)
        code: int | None = child.returncode
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        code = None
    return Run(args, repo, tmp, code, out.decode(errors="replace"))


@pytest.fixture(scope="session")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Run]]]:
    """Every selected case started at once on a small pool (their commands are mostly Python
    starting up, so the lane takes about its length divided by the cores)."""
    selected = [
        cast(Path, item.callspec.params["case"])  # the parameters: _cases()' folders
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_case"
        and Path(item.path) == Path(__file__)
    ]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        yield {
            case.name: pool.submit(run_case, case, tmp_path_factory.mktemp(case.name))
            for case in selected
        }
        pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("case", _cases(), ids=lambda path: path.name)
def test_case(case: Path, runs: dict[str, Future[Run]], tmp_path: Path) -> None:
    expect = _expectation(case)
    run = runs[case.name].result() if case.name in runs else run_case(case, tmp_path)
    shown = f"gitops-nodes {' '.join(run.args)} (exit {run.code}):\n{run.output[-4000:]}"
    if run.code is None:
        pytest.fail(f"{case.name}: ran past {TIMEOUT:.0f} s: {shown}")
    assert "Traceback" not in run.output, shown
    assert run.code == expect.exit, shown
    for text in expect.output:
        assert _substitute(text, run.repo, run.tmp) in run.output, f"missing {text!r} in {shown}"
    for text in expect.absent:
        wrong = _substitute(text, run.repo, run.tmp)
        assert wrong not in run.output, f"unexpected {text!r} in {shown}"


def test_every_case_folder_is_a_case() -> None:
    # A folder without expect.toml (or with a misspelt one) would silently never run.
    folders = sorted(path.name for path in CASES.iterdir() if path.is_dir())
    assert folders == [path.name for path in _cases()]
    for case in _cases():
        expect = _expectation(case)
        assert expect.command and all(isinstance(arg, str) for arg in expect.command), case.name
        assert all(isinstance(text, str) for text in [*expect.output, *expect.absent]), case.name
