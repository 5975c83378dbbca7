"""apply and serve together: the alias keeps answering while apply replaces its instances."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir, balancer_acks

from .helpers import alias_yaml, apply, node_yaml

Repo = Callable[[str], Path]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def serve(state: StateDir, project: str) -> Iterator[Callable[[], int]]:
    """Start `gitops-nodes serve` for the project; returns its data port. Stopped afterwards."""
    processes: list[subprocess.Popen[str]] = []

    def start() -> int:
        port, admin = free_port(), free_port()
        env = {**os.environ, "GITOPS_NODES_STATE_DIR": str(state.path.parent)}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitops_nodes",
                "serve",
                "--project",
                project,
                "--port",
                str(port),
                "--admin-port",
                str(admin),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(process)
        deadline = time.monotonic() + 15
        while not balancer_acks(state):
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the balancer did not start"
            time.sleep(0.05)
        return port

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=20)


def call(connection: http.client.HTTPConnection, path: str) -> tuple[int, dict[str, str]]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def wait_for_version(port: int, path: str, version: str) -> None:
    deadline = time.monotonic() + 15
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while True:
        status, body = call(connection, path)
        if status == 200 and body.get("version") == version:
            return
        assert time.monotonic() < deadline, (status, body)
        time.sleep(0.05)


class Load:
    """Bounded keep-alive load against one URL from a few threads, counting every outcome."""

    def __init__(self, port: int, path: str, threads: int = 4) -> None:
        self.port = port
        self.path = path
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for _ in range(20_000):  # bounded; the stop flag ends it much sooner
            if self.stop.is_set():
                return
            try:
                status, body = call(connection, self.path)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.failures.append(repr(exc))
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            if status != 200:
                self.failures.append(f"{status} {body}")
            else:
                self.versions[body["version"]] += 1


@pytest.mark.parametrize("instances", [1, 2])
def test_alias_keeps_serving_through_a_rolling_replacement(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve: Callable[[], int],
    instances: int,
) -> None:
    root = app_repo(node_yaml("api", "1", instances=instances) + alias_yaml("api", {"api": 1}))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    port = serve()
    wait_for_version(port, "/aliases/api/", "1")

    with Load(port, "/aliases/api/predict") as load:
        app_repo(node_yaml("api", "2", instances=instances) + alias_yaml("api", {"api": 1}))
        run = apply(root, runtime, project, state)
        assert run.report is not None and run.report.ok, run.report
        details = [r.detail for r in run.report.results]
        drains = [d for d in details if "drained and stopped" in d]
        assert len(drains) == instances, details
        assert not [d for d in details if "in time" in d], details
        wait_for_version(port, "/aliases/api/", "2")
    assert load.failures == []
    assert load.versions["1"] > 0 and load.versions["2"] > 0, load.versions


def test_moving_an_alias_to_a_new_node_fails_no_request(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir, serve: Callable[[], int]
) -> None:
    root = app_repo(node_yaml("v1", "1") + alias_yaml("api", {"v1": 1}))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    port = serve()
    wait_for_version(port, "/aliases/api/", "1")

    with Load(port, "/aliases/api/predict") as load:
        app_repo(node_yaml("v2", "2") + alias_yaml("api", {"v2": 1}))
        run = apply(root, runtime, project, state)
        assert run.report is not None and run.report.ok, run.report
        wait_for_version(port, "/aliases/api/", "2")
    assert load.failures == []
    assert load.versions["1"] > 0 and load.versions["2"] > 0, load.versions
    assert {i.node for i in runtime.list_instances(project)} == {"v2"}
