"""`gitops-nodes status --watch` redraws the overview in place until Ctrl-C, on the real engine:
on a terminal, each frame clears the screen; in a pipe or a log, frames follow each other."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time

from gitops_nodes.statedir import StateDir

CLEAR = b"\x1b[H\x1b[2J"
HEADER = b"Every 0.2s: gitops-nodes status"


def watch_status(project: str, state: StateDir, terminal: bool) -> bytes:
    """Run `status --watch 0.2` until three frames came, then Ctrl-C it; what it wrote."""
    command = [sys.executable, "-m", "gitops_nodes", "status", "--project", project]
    command += ["--state-dir", str(state.path.parent), "--watch", "0.2"]
    if terminal:
        reader, writer = pty.openpty()
    else:
        reader, writer = os.pipe()
    process = subprocess.Popen(
        command,
        stdout=writer,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    os.close(writer)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while seen.count(HEADER) < 3:
            assert time.monotonic() < deadline, seen
            chunk = os.read(reader, 4096)
            assert chunk, process.stderr.read() if process.stderr else b""
            seen += chunk
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        os.close(reader)
        if process.poll() is None:
            process.kill()
            process.wait()
    return seen


def test_status_watch_redraws_a_terminal_until_interrupted(project: str, state: StateDir) -> None:
    seen = watch_status(project, state, terminal=True)
    assert seen.count(CLEAR) >= 3  # each frame cleared and redrawn
    frame = seen.split(CLEAR)[1].decode()
    assert frame.startswith("Every 0.2s: gitops-nodes status")
    assert f"Project {project} has no nodes." in frame


def test_status_watch_into_a_pipe_writes_plain_frames(project: str, state: StateDir) -> None:
    # Before: the terminal's escape codes went into pipes and log files too.
    seen = watch_status(project, state, terminal=False)
    assert b"\x1b" not in seen
    first, second = seen.split(b"\n\n" + HEADER)[:2]
    assert first.startswith(HEADER) and f"Project {project} has no nodes.".encode() in first
    assert f"Project {project} has no nodes.".encode() in second
