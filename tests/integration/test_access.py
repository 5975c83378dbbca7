"""A private alias on a real container, served by `gitops-nodes serve` over real HTTP.

apply reads the keys (one from the environment, one from a file outside the repository) and
publishes only their digests; the balancer process is started without any key in its
environment, and neither its logs nor the table file ever hold one.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from balancer.table import FORMAT_WITH_ACCESS
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.statedir import StateDir

from .helpers import apply, free_port, node_yaml, table, wait_until_serving

Repo = Callable[[str], Path]
CI_KEY = "ci-key-0123456789abcdef"
ROTATED_KEY = "ci-key-rotated-9876543210"
ANALYST_KEY = "analyst-key-fedcba9876543210"


def private_alias(key_file: Path) -> str:
    return f"""
apiVersion: gitops-nodes/v1
kind: Alias
metadata: {{name: api}}
spec:
  nodes: [{{node: api, weight: 1}}]
  access:
    keys:
      - {{name: ci, fromEnv: GNT_CI_KEY}}
      - {{name: analyst, fromFile: {key_file}}}
"""


@pytest.fixture
def serve_with_access_log(
    state: StateDir, project: str, tmp_path: Path
) -> Iterator[tuple[Callable[[], int], Path]]:
    """`gitops-nodes serve --access-log` with no key in its environment; its output file."""
    output = tmp_path / "serve.log"
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "GNT_CI_KEY"}
        env["GITOPS_NODES_STATE_DIR"] = str(state.path.parent)
        command = [sys.executable, "-m", "gitops_nodes", "serve", "--project", project]
        command += ["--port", str(port), "--admin-port", str(free_port()), "--access-log"]
        with output.open("wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        wait_until_serving(state, process, output.read_text)
        return port

    yield start, output
    for process in processes:
        process.terminate()
        process.wait(timeout=20)


def call(port: int, headers: dict[str, str]) -> tuple[int, dict[str, Any], str | None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/aliases/api/predict", headers=headers)
        response = connection.getresponse()
        return (
            response.status,
            json.loads(response.read()),
            response.getheader("www-authenticate"),
        )
    finally:
        connection.close()


def wait_for_status(port: int, headers: dict[str, str], status: int) -> dict[str, Any]:
    """Poll until the alias answers status to these headers (a new table takes a moment)."""
    deadline = time.monotonic() + 15
    while True:
        got, body, _ = call(port, headers)
        if got == status:
            return body
        assert time.monotonic() < deadline, (got, body)
        time.sleep(0.05)


def test_a_private_alias_on_a_real_container(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve_with_access_log: tuple[Callable[[], int], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start_serving, output = serve_with_access_log
    key_file = tmp_path / "secrets" / "analyst.key"
    key_file.parent.mkdir()
    key_file.write_text(ANALYST_KEY + "\n")
    monkeypatch.setenv("GNT_CI_KEY", CI_KEY)
    root = app_repo(node_yaml("api", "1") + private_alias(key_file))

    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    text = state.table.read_text()
    assert json.loads(text)["format"] == FORMAT_WITH_ACCESS
    assert CI_KEY not in text and ANALYST_KEY not in text
    port = start_serving()

    status, body, challenge = call(port, {})
    assert (status, challenge) == (401, 'Bearer realm="gitops-nodes"'), body
    assert body["alias"] == "api"
    status, body, _ = call(port, {"Authorization": f"Bearer {CI_KEY}"})
    assert status == 200 and body == {
        "version": "1",
        "path": "/predict",
        "caller": "ci",
        "sawKey": False,  # the instance never sees the key
    }
    status, body, _ = call(port, {"Authorization": f"Api-Key {ANALYST_KEY}"})
    assert status == 200 and body["caller"] == "analyst"
    assert call(port, {"x-api-key": ANALYST_KEY})[0] == 200
    assert call(port, {"x-api-key": "not-the-key-0123456789"})[0] == 401
    # the node behind the alias is not private itself: called directly, it answers
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/nodes/api/predict")
    assert connection.getresponse().status == 200
    connection.close()

    # Rotating the key: a change the plan shows, applied without touching the container.
    containers = {i.name for i in runtime.list_instances(project)}
    monkeypatch.setenv("GNT_CI_KEY", ROTATED_KEY)
    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    (change,) = run.plan.diff.aliases
    assert [f.field for f in change.fields] == ["access.keys.ci"]
    assert run.plan.diff.nodes == ()
    wait_for_status(port, {"Authorization": f"Bearer {CI_KEY}"}, 401)
    assert wait_for_status(port, {"Authorization": f"Bearer {ROTATED_KEY}"}, 200)["caller"] == "ci"
    assert {i.name for i in runtime.list_instances(project)} == containers

    # A key that cannot be read stops apply before anything changes.
    generation = table(state).generation
    monkeypatch.delenv("GNT_CI_KEY")
    with pytest.raises(SpecErrors) as caught:
        apply(root, runtime, project, state)
    (problem,) = caught.value.problems
    assert (problem.file, problem.field) == ("spec.yaml", "spec.access.keys[0].fromEnv")
    assert "GNT_CI_KEY is not set" in problem.message and problem.line > 0
    assert table(state).generation == generation
    assert {i.name for i in runtime.list_instances(project)} == containers
    assert call(port, {"Authorization": f"Bearer {ROTATED_KEY}"})[0] == 200

    logged = output.read_text()
    assert '"caller": "analyst"' in logged  # the access log names callers...
    for key in (CI_KEY, ROTATED_KEY, ANALYST_KEY):  # ...and never holds a key
        assert key not in logged
