"""Reads over the engine's socket against the real engine: they see what the Docker SDK sees,
and a command with nothing to do never imports the SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gitops_nodes.runtime import labels
from gitops_nodes.runtime.docker import DockerRuntime, follow_events
from gitops_nodes.runtime.docker_lazy import LazyDockerRuntime
from gitops_nodes.runtime.engine_socket import EngineSocket, socket_from_env
from gitops_nodes.statedir import StateDir
from tests.conftest import BASE_IMAGE

from .helpers import apply, node_yaml

Repo = Callable[[str], Path]

# Runs one command in a fresh interpreter and reports whether the Docker SDK was imported.
COMMAND = """
import json, sys
from gitops_nodes import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "sdk": "docker" in sys.modules}))
"""


def _run(args: list[str], state: StateDir) -> tuple[dict[str, object], str]:
    env = {**os.environ, "GITOPS_NODES_STATE_DIR": str(state.path.parent)}
    result = subprocess.run(
        [sys.executable, "-c", COMMAND, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout.splitlines()[-1]), result.stdout + result.stderr


def test_the_socket_reads_what_the_sdk_reads(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api-v1", "1", instances=2) + node_yaml("web-v1", "1"))
    apply(root, runtime, project, state)
    path = socket_from_env()
    assert path is not None, "the tests' engine is expected on its local socket"

    lazy = LazyDockerRuntime(EngineSocket(path))

    by_socket = sorted(lazy.list_instances(project), key=lambda i: i.name)
    by_sdk = sorted(runtime.list_instances(project), key=lambda i: i.name)
    assert len(by_socket) == 3
    assert by_socket == by_sdk
    assert lazy.list_images(project) == runtime.list_images(project)
    assert lazy.host_name() == runtime.host_name()
    assert lazy._sdk is None  # all of it read without the SDK runtime


def test_a_command_with_nothing_to_do_never_imports_the_sdk(
    app_repo: Repo, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api-v1", "1"))
    first, output = _run(["apply", str(root), "--project", project], state)
    assert first == {"code": 0, "sdk": True}, output  # creating needs the SDK

    for command in (["plan", "--detailed-exitcode"], ["apply"], ["status"]):
        report, output = _run([command[0], str(root), "--project", project, *command[1:]], state)
        assert report == {"code": 0, "sdk": False}, output
        if command[0] != "status":
            assert "No changes." in output, output

    changed = app_repo(node_yaml("api-v1", "2"))
    report, output = _run(["apply", str(changed), "--project", project], state)
    assert report == {"code": 0, "sdk": True}, output  # a change loads it, and is made
    assert "Apply complete" in output, output


def _engine() -> EngineSocket:
    path = socket_from_env()
    assert path is not None, "the tests' engine is expected on its local socket"
    return EngineSocket(path)


def test_the_socket_reads_a_window_of_the_projects_events(docker_client: Any, project: str) -> None:
    selector = {"type": ["container"], "label": [f"{labels.PROJECT}={project}"]}
    since = time.time()
    container = docker_client.containers.run(
        BASE_IMAGE, ["sleep", "30"], detach=True, labels={labels.PROJECT: project}
    )
    container.kill()
    until = time.time() + 0.5

    actions = [event.get("Action") for event in _engine().events(since, until, selector)]

    assert "start" in actions and "die" in actions, actions
    others = {"type": ["container"], "label": [f"{labels.PROJECT}={project}-other"]}
    assert _engine().events(since, until, others) == []


def test_watch_hears_of_a_project_container_that_dies(docker_client: Any, project: str) -> None:
    heard: list[str] = []
    stop = threading.Event()
    follower = threading.Thread(target=follow_events, args=(project, heard.append, stop))
    follower.start()
    try:
        # A container of the project dies every few seconds until watch's follower tells of
        # it: the follower's first window starts when its thread runs, which this test cannot
        # see, so a death before it would not count; a later one must.
        deadline = time.monotonic() + 30
        while "drift" not in heard and time.monotonic() < deadline:
            docker_client.containers.run(
                BASE_IMAGE, ["sleep", "60"], detach=True, labels={labels.PROJECT: project}
            ).kill()
            told_by = time.monotonic() + 5
            while "drift" not in heard and time.monotonic() < told_by:
                time.sleep(0.1)
    finally:
        stop.set()
        follower.join(timeout=15)
    assert "drift" in heard
    assert not follower.is_alive()
