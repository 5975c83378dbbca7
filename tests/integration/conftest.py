"""Integration fixtures: a real DockerRuntime, a per-test state directory, and the processes and
repositories more than one module uses (`serve`, `watch`, `model_repo`)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir
from tests.conftest import APP_DIR

from .helpers import PYTHON_CODE, Watch, free_port, git, wait_until_serving


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
    """Start `gitops-nodes watch` on a fresh git repository holding the test service and a
    first commit of the given spec. Stopped afterwards."""
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shutil.copytree(APP_DIR, repo / "app")
    started: list[Watch] = []

    def start(first_spec: str) -> Watch:
        watcher = Watch(repo, project, tmp_path / "state")
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
