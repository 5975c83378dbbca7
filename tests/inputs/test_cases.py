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

In arguments and env values, "{repo}" is the temporary repository and "{tmp}" a temporary
folder beside it (outside the repository). Each case runs `python3 -m gitops_nodes` in its
own process, with a deadline and a memory limit, so a hang or a blow-up fails that case
instead of the run; no case may print a Python traceback.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CASES = Path(__file__).parent / "cases"
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0  # seconds for one case's command
MEMORY = 2 * 2**30  # bytes of address space for one case's command
_KEYS = {"command", "exit", "output", "absent", "env"}


@dataclass(frozen=True)
class Expectation:
    """What one case's expect.toml asks for."""

    command: list[str]
    exit: int
    output: list[str]
    absent: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


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
    )


def _cases() -> list[Path]:
    return sorted(path for path in CASES.iterdir() if (path / "expect.toml").is_file())


def _limit_memory() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


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


@pytest.mark.parametrize("case", _cases(), ids=lambda path: path.name)
def test_case(case: Path, tmp_path: Path) -> None:
    expect = _expectation(case)
    repo, tmp = tmp_path / "repo", tmp_path / "tmp"
    tmp.mkdir()
    if (case / "repo").is_dir():
        shutil.copytree(case / "repo", repo, symlinks=True)
    else:
        repo.mkdir()
    if (case / "make.py").is_file():
        _make(case, repo)
    args = [_substitute(arg, repo, tmp) for arg in expect.command]
    if not any("{repo}" in arg for arg in expect.command):
        args.append(str(repo))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GITOPS_NODES_STATE_DIR": str(tmp / "state"),
        "GITOPS_NODES_PROJECT": "gitops-nodes-inputs",
        **{name: _substitute(value, repo, tmp) for name, value in expect.env.items()},
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gitops_nodes", *args],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case.name}: gitops-nodes {' '.join(args)} ran past {TIMEOUT:.0f} s")
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    shown = f"gitops-nodes {' '.join(args)} (exit {done.returncode}):\n{output[-4000:]}"
    assert "Traceback" not in output, shown
    assert done.returncode == expect.exit, shown
    for text in expect.output:
        assert _substitute(text, repo, tmp) in output, f"missing {text!r} in {shown}"
    for text in expect.absent:
        assert _substitute(text, repo, tmp) not in output, f"unexpected {text!r} in {shown}"
