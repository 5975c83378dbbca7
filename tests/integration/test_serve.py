"""apply and serve together: the alias keeps answering while apply replaces its instances,
and when the engine restarts one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.live import LiveInstance
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir
from tests.waiting import wait_until

from .helpers import Load, alias_yaml, apply, node_yaml, wait_for_version

Repo = Callable[[str], Path]


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


def test_an_instance_the_engine_restarts_keeps_its_port_and_serves_again(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve: Callable[[], int],
    docker_client: Any,
) -> None:
    root = app_repo(node_yaml("api", "1") + alias_yaml("api", {"api": 1}))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    port = serve()
    wait_for_version(port, "/aliases/api/", "1")
    [before] = runtime.list_instances(project)

    # Its process ends by itself (as after a crash): the restart policy starts it again.
    container = docker_client.containers.get(before.name)
    container.exec_run(["python3", "-c", "import os, signal; os.kill(1, signal.SIGTERM)"])

    def restarted() -> LiveInstance | None:
        data = docker_client.api.inspect_container(before.name)
        [instance] = runtime.list_instances(project)
        running = data["RestartCount"] > 0 and instance.state == "running"
        return instance if running and instance.port is not None else None

    after = wait_until(restarted, "the engine to restart the instance", within=30)
    assert (after.name, after.port) == (before.name, before.port)
    wait_for_version(port, "/aliases/api/", "1")  # with no apply in between
