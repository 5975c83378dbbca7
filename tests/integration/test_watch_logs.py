"""`gitops-nodes watch` logs through the same pipeline as serve: under `--log-format json`
every line is one JSON object (the access log's fields at its top level, not a JSON string
inside the message), under `text` one plain line. A work tree with no spec is enough: the
reconciles and the balancer's access log both write."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gitops_nodes.runtime.docker import free_loopback_port
from tests.loglines import access_records, json_lines, text_lines
from tests.waiting import wait_until


def run_watch(tmp_path: Path, project: str, log_format: str) -> str:
    """Run watch on an empty work tree, send it two requests, stop it; its whole output."""
    repo = tmp_path / f"repo-{log_format}"
    repo.mkdir()
    port, admin = free_loopback_port(), free_loopback_port()
    output = tmp_path / f"watch-{log_format}.log"
    command = [sys.executable, "-m", "gitops_nodes", "watch", str(repo), "--project", project]
    command += ["--state-dir", str(tmp_path / "state"), "--interval", "1s", "--access-log"]
    command += ["--port", str(port), "--admin-port", str(admin), "--log-format", log_format]
    with output.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=os.environ
        )
    try:

        def answers() -> int:
            assert process.poll() is None, output.read_text()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                connection.request("GET", "/aliases/nope/x")
                return connection.getresponse().status
            except OSError:
                return 0
            finally:
                connection.close()

        assert wait_until(answers, "watch to serve", 60.0, 0.1) == 404
        wait_until(lambda: "reconcile of" in output.read_text(), "a reconcile to be logged", 30.0)
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert process.returncode == 0, output.read_text()
    return output.read_text()


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_watch_logs_one_pipeline(tmp_path: Path, project: str, log_format: str) -> None:
    text = run_watch(tmp_path, project, log_format)
    if log_format == "json":
        records = json_lines(text)
        access = access_records(records)
        assert access and access[0]["status"] == 404 and access[0]["target"] == "/aliases/nope/x"
        assert any(r["message"].startswith("watching ") for r in records)
        assert any(r["message"].startswith("reconcile of") for r in records)
    else:
        lines = text_lines(text)
        access_lines = [line for line in lines if " gitops_nodes.balancer.access " in line]
        assert access_lines
        assert " status=404 " in access_lines[0] and " target=/aliases/nope/x " in access_lines[0]
        assert any(" reconcile of " in line and " outcome=" in line for line in lines)
