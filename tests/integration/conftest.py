"""Integration fixtures: a real DockerRuntime and a per-test state directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir


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
