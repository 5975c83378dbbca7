"""Integration fixtures: a real DockerRuntime, a per-test state directory, the processes and
repositories more than one module uses (`serve`, `watch`, `model_repo`), and a one-node swarm
with per-test projects for the Swarm runtime."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from gitops_nodes.runtime.container_records import image_names
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir
from tests.conftest import APP_DIR

from .helpers import PYTHON_CODE, Watch, free_port, git, remove_networks, wait_until_serving


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def runtime(docker_client: Any) -> DockerRuntime:
    return DockerRuntime(docker_client)


@pytest.fixture
def state(tmp_path: Path, project: str) -> StateDir:
    return StateDir.for_project(project, tmp_path / "state")


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
        wait_until_serving(state, process, lambda: process.stdout.read() if process.stdout else "")
        return port

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def watch(tmp_path: Path, project: str) -> Iterator[Callable[[str], Watch]]:
    """Start `gitops-nodes watch` (with any more arguments given) on a fresh git repository
    holding the test service and a first commit of the given spec. Stopped afterwards."""
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shutil.copytree(APP_DIR, repo / "app")
    started: list[Watch] = []

    def start(first_spec: str, *args: str) -> Watch:
        watcher = Watch(repo, project, tmp_path / "state", args=args)
        watcher.commit(first_spec, "first")
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        if watcher.process.poll() is None:
            watcher.stop()


@pytest.fixture
def model_repo(tmp_path: Path) -> Callable[..., Path]:
    """A repo with a python node's code and a checkpoint holding weights and bias."""
    root = tmp_path / "repo"

    def make(spec: str, weights: list[float] | None = None, code: str = PYTHON_CODE) -> Path:
        (root / "model").mkdir(parents=True, exist_ok=True)
        (root / "model" / "predict.py").write_text(code)
        state = {"weights": weights or [0.5, -1.0, 2.0], "bias": 0.1}
        (root / "model" / "state.pkl").write_bytes(pickle.dumps(state))
        (root / "spec.yaml").write_text(spec)
        return root

    return make


# -- a one-node swarm for the Swarm runtime's tests --------------------------------------------

SWARM_LOCK = Path("/var/tmp/gitops-nodes-swarm-tests.lock")
SWARM_MADE = Path("/var/tmp/gitops-nodes-swarm-tests.made")  # written by the session that made it
GATEWAY_BRIDGE = "docker_gwbridge"  # the engine makes it for the first swarm task; not removed


@pytest.fixture(scope="session")
def swarm(docker_client: Any) -> Iterator[str]:
    """The engine as a one-node swarm manager for the session; its node id.

    Other test sessions may run ordinary container tests on this engine meanwhile, which a
    swarm does not disturb. The swarm is made (`docker swarm init`, management port on
    loopback) only when the engine is in none, and left (`docker swarm leave --force`) at the
    end only by a session that made it (or whose predecessor did and died), once no other
    test session uses it: every session holds a shared lock on SWARM_LOCK while it runs.
    """
    SWARM_LOCK.touch(exist_ok=True)
    handle = SWARM_LOCK.open("r")
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        info = docker_client.info()["Swarm"]
        if info["LocalNodeState"] == "inactive":
            bridge_before = bool(docker_client.networks.list(names=[GATEWAY_BRIDGE]))
            docker_client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
            info = docker_client.info()["Swarm"]
            SWARM_MADE.write_text(
                json.dumps({"node": info["NodeID"], "bridge_before": bridge_before})
            )
        elif info["LocalNodeState"] != "active" or not info.get("ControlAvailable"):
            pytest.fail(
                f"the Docker engine is in a swarm state the tests cannot use "
                f"({info['LocalNodeState']}, manager: {info.get('ControlAvailable')})",
                pytrace=False,
            )
        node = str(info["NodeID"])
    finally:
        fcntl.flock(handle, fcntl.LOCK_SH)  # from now on: one of the sessions using it
    try:
        yield node
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()  # another session still uses it; the last one out leaves
        else:
            try:
                _leave_if_made_here(docker_client, node)
            finally:
                handle.close()


def _leave_if_made_here(docker_client: Any, node: str) -> None:
    try:
        made = json.loads(SWARM_MADE.read_text())
    except (OSError, ValueError):
        return  # the swarm was there before the tests: it stays
    if made.get("node") != node:
        SWARM_MADE.unlink(missing_ok=True)  # a record of a swarm that is gone
        return
    if docker_client.services.list():
        return  # someone else's services run on it now: leaving would remove them
    docker_client.swarm.leave(force=True)
    SWARM_MADE.unlink(missing_ok=True)
    if not made.get("bridge_before"):
        for network in docker_client.networks.list(names=[GATEWAY_BRIDGE]):
            with contextlib.suppress(docker.errors.APIError):  # in use: it stays
                network.remove()


@pytest.fixture
def swarm_project(swarm: str, docker_client: Any) -> Iterator[str]:
    """A unique project on the swarm; afterwards its services, secrets, networks, containers
    and images are removed (by label), even when the test failed."""
    name = f"gns-{secrets.token_hex(4)}"
    yield name
    selector = {"label": [f"io.gitops-nodes.project={name}"]}
    api = docker_client.api
    for service in api.services(filters=selector):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_service(service["ID"])
    deadline = time.monotonic() + 60
    while api.containers(all=True, filters=selector) and time.monotonic() < deadline:
        time.sleep(0.2)  # Swarm stops the tasks of removed services by itself
    for container in api.containers(all=True, filters=selector):
        api.remove_container(container["Id"], force=True, v=True)
    for secret in api.secrets(filters=selector):
        api.remove_secret(secret["ID"])
    remove_networks(api, selector, deadline)
    built_for = {"label": [f"io.gitops-nodes.built-for={name}"]}  # images: not the project's
    images = {i["Id"]: i for f in (built_for, selector) for i in api.images(filters=f)}
    for image in images.values():
        for tag in image_names(image):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_image(tag, force=True)
