"""apply and destroy on a terminal (a pseudo-terminal the test opens): the live display shows
the step that runs now with what it is doing (a build's current instruction), and a failed
build's last log lines reach the user."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gitops_nodes.statedir import StateDir
from tests.conftest import APP_DIR
from tests.integration.helpers import free_port, git

DEADLINE = 180.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def in_terminal(
    argv: list[str], within: float = DEADLINE, until: Callable[[str], bool] | None = None
) -> tuple[int, str]:
    """Run argv with a pseudo-terminal as its stdin, stdout and stderr: (exit code, what it
    wrote, with terminal control sequences removed). With until, it is sent SIGTERM once
    what it wrote satisfies until."""
    main, child = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    process = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
            if until is not None and until(ANSI.sub("", b"".join(chunks).decode(errors="replace"))):
                process.send_signal(signal.SIGTERM)
                until = None
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(main)
    return code, ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def repo_with(root: Path, dockerfile: str) -> Path:
    """A repo with one node built from a folder whose Dockerfile is given."""
    (root / "slow").mkdir(parents=True)
    shutil.copy(APP_DIR / "server.py", root / "slow" / "server.py")
    (root / "slow" / "Dockerfile").write_text(dockerfile)
    (root / "spec.yaml").write_text(
        "apiVersion: gitops-nodes/v1\n"
        "kind: Node\n"
        "metadata: {name: web}\n"
        "spec:\n"
        "  image: {build: slow, port: 8080}\n"
        "  healthCheck: {path: /healthz, interval: 200ms, timeout: 1s, startTimeout: 30s}\n"
    )
    return root


def cli(project: str, state: StateDir, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gitops_nodes",
        *args,
        "--project",
        project,
        "--state-dir",
        str(state.path.parent),
    ]


def test_apply_and_destroy_on_a_terminal_show_the_build_step_that_runs_now(
    tmp_path: Path, project: str, state: StateDir
) -> None:
    root = repo_with(
        tmp_path / "repo",
        "FROM gitops-nodes/python-base:bookworm\n"
        "COPY server.py /app/server.py\n"
        "RUN sleep 3 && echo slept-on-purpose\n"
        'CMD ["python3", "/app/server.py"]\n',
    )

    code, shown = in_terminal(cli(project, state, "apply", "--auto-approve", str(root)))

    assert code == 0, shown
    # The live display named the build's current instruction while it ran ...
    assert "RUN sleep 3 && echo slept-on-purpose" in shown, shown
    # ... and the lines printed above it are the plain ones, as without a terminal.
    # (The display's frames are redrawn in place: the control sequences removed, a plain
    # line follows the last frame on the same line.)
    assert re.search(r"build \S+: ok in \d+\.\ds, built \S+ from slow\n", shown), shown
    assert re.search(r"wait web/0: ok in \d+\.\ds, \S+ is Healthy", shown), shown
    assert "Apply complete:" in shown

    code, shown = in_terminal(cli(project, state, "destroy", str(root)))
    assert code == 0, shown
    assert "Destroy complete:" in shown


def test_a_failed_build_on_a_terminal_shows_the_last_lines_of_its_log(
    tmp_path: Path, project: str, state: StateDir
) -> None:
    root = repo_with(
        tmp_path / "repo",
        "FROM gitops-nodes/python-base:bookworm\n"
        "RUN echo first-words && echo last-words-of-the-build && exit 3\n",
    )

    code, shown = in_terminal(cli(project, state, "apply", "--auto-approve", str(root)))

    assert code == 1, shown
    assert "FAILED" in shown and "last-words-of-the-build" in shown, shown
    assert "Apply failed:" in shown


def test_watch_with_text_logs_on_a_terminal_shows_the_build_step_that_runs_now(
    tmp_path: Path, project: str, state: StateDir
) -> None:
    root = repo_with(
        tmp_path / "repo",
        "FROM gitops-nodes/python-base:bookworm\n"
        "COPY server.py /app/server.py\n"
        "RUN sleep 3 && echo slept-on-purpose\n"
        'CMD ["python3", "/app/server.py"]\n',
    )
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    argv = cli(project, state, "watch", f"file://{root}", "--log-format", "text")
    argv += ["--interval", "1s", "--port", str(free_port()), "--admin-port", str(free_port())]

    code, shown = in_terminal(argv, until=lambda text: "applied: 4 steps" in text)

    assert code == 0, shown
    assert "RUN sleep 3 && echo slept-on-purpose" in shown, shown  # the display, while building
    # The log's own lines, whole: the build's, and the reconcile's.
    assert re.search(r"build \S+: done in \d+\.\d\ds, built \S+ from slow", shown), shown
    assert "applied: 4 steps" in shown
