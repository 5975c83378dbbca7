"""`gitops-nodes status --watch` redraws the overview in place until Ctrl-C, on the real engine."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

from gitops_nodes.statedir import StateDir


def test_status_watch_redraws_until_interrupted(project: str, state: StateDir) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gitops_nodes",
            "status",
            "--project",
            project,
            "--state-dir",
            str(state.path.parent),
            "--watch",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert isinstance(process.stdout, io.BufferedReader)  # read1: what is there, at once
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while seen.count(b"\x1b[H\x1b[2J") < 3:  # three frames, each cleared and redrawn
            assert time.monotonic() < deadline, seen
            chunk = process.stdout.read1(4096)
            assert chunk, process.stderr.read() if process.stderr else b""
            seen += chunk
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    frame = seen.split(b"\x1b[H\x1b[2J")[1].decode()
    assert frame.startswith("Every 0.2s: gitops-nodes status")
    assert f"Project {project} has no nodes." in frame
