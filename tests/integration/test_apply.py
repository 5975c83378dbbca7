"""apply, plan, status and destroy against a real Docker engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from gitops_nodes import workflow
from gitops_nodes.apply import Outcome, StepResult
from gitops_nodes.errors import StalePlan
from gitops_nodes.plan import Step, make_plan
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.spec.load import load_spec
from gitops_nodes.statedir import StateDir

from .helpers import alias_yaml, apply, get_json, healthy_instances, node_yaml, table

Repo = Callable[[str], Path]


def cli(*args: str, state: StateDir, project: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GITOPS_NODES_STATE_DIR": str(state.path.parent)}
    return subprocess.run(
        [sys.executable, "-m", "gitops_nodes", *args, "--project", project],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_apply_from_scratch_then_no_changes(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api-v1", "1", instances=2) + alias_yaml("api", {"api-v1": 100}))

    first = cli("apply", str(root), state=state, project=project)
    assert first.returncode == 0, first.stderr
    assert "Apply complete" in first.stdout

    published = table(state)
    assert published.aliases["api"].targets == (("api-v1", 100),)
    endpoints = published.nodes["api-v1"].endpoints
    assert len(endpoints) == 2
    assert {get_json(e.port)["version"] for e in endpoints} == {"1"}
    assert all(e.host == "127.0.0.1" for e in endpoints)

    again = cli("plan", str(root), "--detailed-exitcode", state=state, project=project)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("No changes.")

    status = cli("status", str(root), "--json", state=state, project=project)
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert [n["status"] for n in view["nodes"]] == ["Healthy"]
    assert [i["status"] for i in view["nodes"][0]["instances"]] == ["Healthy", "Healthy"]
    engine = runtime.api.info()["Name"]  # one host: the engine's name is every instance's
    assert [i["hostname"] for i in view["nodes"][0]["instances"]] == [engine, engine]
    text = cli("status", str(root), state=state, project=project).stdout
    assert f" {engine} " in text

    second = cli("apply", str(root), state=state, project=project)
    assert second.returncode == 0
    assert "No changes." in second.stdout
    assert table(state).generation == published.generation


def test_rolling_replacement_never_drops_below_minimum(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api", "1", instances=3, min_healthy=3))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]

    seen: list[tuple[str, int]] = []

    def count(result: StepResult) -> None:
        seen.append((result.step.id, healthy_instances(runtime, project, "api")))

    app_repo(node_yaml("api", "2", instances=3, min_healthy=3))
    run = apply(root, runtime, project, state, on_result=count)
    assert run.report is not None and run.report.ok, run.report
    assert run.plan.diff.nodes[0].action.value == "-/+"
    assert len(seen) == len(run.plan.graph)
    assert min(healthy for _, healthy in seen) >= 3, seen

    endpoints = table(state).nodes["api"].endpoints
    assert len(endpoints) == 3
    assert {get_json(e.port)["version"] for e in endpoints} == {"2"}
    assert len(runtime.list_instances(project)) == 3


def test_removing_a_node_unpublishes_the_alias_first(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(
        node_yaml("v1", "1") + node_yaml("v2", "2") + alias_yaml("api", {"v1": 50, "v2": 50})
    )
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]

    order: list[str] = []
    app_repo(node_yaml("v2", "2") + alias_yaml("api", {"v2": 100}))
    run = apply(root, runtime, project, state, on_result=lambda r: order.append(r.step.id))
    assert run.report is not None and run.report.ok
    removals = [i for i, step in enumerate(order) if step.startswith("remove ")]
    assert removals and order.index("publish alias api") < min(removals)
    published = table(state)
    assert published.aliases["api"].targets == (("v2", 100),)
    assert "v1" not in published.nodes
    assert {i.node for i in runtime.list_instances(project)} == {"v2"}


def test_instance_removed_by_hand_is_healed(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir, docker_client: Any
) -> None:
    root = app_repo(node_yaml("api", "1", instances=2) + alias_yaml("api", {"api": 1}))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    victim = sorted(runtime.list_instances(project), key=lambda i: i.index)[0]
    docker_client.api.remove_container(victim.name, force=True)

    plan = make_plan(project, load_spec(root), workflow.observe(runtime, project, state))
    assert [c.action.value for c in plan.diff.nodes] == ["~"]
    assert "instance 0 is missing" in plan.diff.nodes[0].reason

    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok
    instances = runtime.list_instances(project)
    assert sorted(i.index for i in instances) == [0, 1]
    assert victim.name not in {e.instance for e in table(state).nodes["api"].endpoints}
    assert healthy_instances(runtime, project, "api") == 2


def test_unlabelled_container_survives_apply_and_destroy(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir, docker_client: Any
) -> None:
    # Labelled with the project so the fixture cleans it up, but without a node label, and a
    # second one with no labels of ours at all: neither is ours to touch.
    bystander = docker_client.containers.create(
        "gitops-nodes/python-base:bookworm",
        ["sleep", "300"],
        name=f"{project}-bystander",
        labels={"io.gitops-nodes.project": project},
    )
    stranger = docker_client.containers.run(
        "gitops-nodes/python-base:bookworm",
        ["sleep", "300"],
        name=f"{project}-stranger",
        detach=True,
    )
    try:
        root = app_repo(node_yaml("api", "1"))
        assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
        destroyed = cli("destroy", str(root), state=state, project=project)
        assert destroyed.returncode == 0, destroyed.stderr
        assert runtime.list_instances(project) == []
        assert docker_client.containers.get(bystander.id).status == "created"
        assert docker_client.containers.get(stranger.id).status == "running"
        assert not state.table.exists()
    finally:
        stranger.remove(force=True)


def test_bad_spec_changes_nothing(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api", "1") + alias_yaml("api", {"api": 1}))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    before = sorted((i.name, i.spec_hash) for i in runtime.list_instances(project))
    table_before = state.table.read_text()

    app_repo(node_yaml("api", "2", instances=0) + alias_yaml("api", {"nope": 1}))
    result = cli("apply", str(root), state=state, project=project)
    assert result.returncode == 1
    assert "the spec has 2 errors:" in result.stderr
    assert "spec.yaml:6:14: spec.instances: expected a value ≥ 1, got 0" in result.stderr
    assert (
        "spec.yaml:17:14: spec.nodes[0].node: expected the name of a Node in the spec, "
        "there is no Node 'nope'" in result.stderr
    )
    assert sorted((i.name, i.spec_hash) for i in runtime.list_instances(project)) == before
    assert state.table.read_text() == table_before


def test_instance_that_never_becomes_healthy_fails_apply_and_keeps_serving(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("v1", "1") + alias_yaml("api", {"v1": 100}))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    served_before = table(state)

    app_repo(
        node_yaml("v1", "1")
        + node_yaml("v2", "2", extra_env=', HEALTH: "fail"').replace(
            "startTimeout: 15s", "startTimeout: 2s"
        )
        + alias_yaml("api", {"v1": 50, "v2": 50})
    )
    run = apply(root, runtime, project, state)
    assert run.report is not None and not run.report.ok
    failed = run.report.with_outcome(Outcome.FAILED)
    assert [r.step.id for r in failed] == ["wait v2/0"]
    assert "did not become Healthy within 2s" in failed[0].detail
    assert "publish alias api" in [r.step.id for r in run.report.with_outcome(Outcome.NOT_STARTED)]
    after = table(state)
    assert after.aliases == served_before.aliases
    assert {i.node for i in runtime.list_instances(project)} == {"v1"}  # the failed one is gone
    assert healthy_instances(runtime, project, "v1") == 1


def test_crashing_instance_fails_fast_with_its_logs(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api", "1", extra_env=', CRASH: "1"'))
    run = apply(root, runtime, project, state)
    assert run.report is not None and not run.report.ok
    (failed,) = run.report.with_outcome(Outcome.FAILED)
    assert failed.step.step is Step.WAIT
    assert "crashing on purpose" in failed.detail
    assert failed.seconds < 10
    assert runtime.list_instances(project) == []


def test_saved_plan_applies_and_is_refused_once_stale(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir, tmp_path: Path
) -> None:
    root = app_repo(node_yaml("api", "1"))
    saved = tmp_path / "api.plan"
    made = cli("plan", str(root), "-out", str(saved), state=state, project=project)
    assert made.returncode == 0, made.stderr
    applied = cli("apply", str(saved), state=state, project=project)
    assert applied.returncode == 0, applied.stderr
    assert [i.node for i in runtime.list_instances(project)] == ["api"]

    stale = tmp_path / "stale.plan"
    assert cli("plan", str(root), "-out", str(stale), state=state, project=project).returncode == 0
    app_repo(node_yaml("api", "2"))
    refused = cli("apply", str(stale), state=state, project=project)
    assert refused.returncode == 1
    assert "the saved plan is stale: the spec changed" in refused.stderr
    with pytest.raises(StalePlan):
        desired, data = workflow.load_for_apply(stale)
        workflow.apply(desired, runtime, project, state, saved=data)


def test_concurrent_applies_take_turns(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    started: Callable[..., subprocess.Popen[str]],
) -> None:
    root = app_repo(node_yaml("api", "1", instances=2))
    env = {**os.environ, "GITOPS_NODES_STATE_DIR": str(state.path.parent)}
    command = [sys.executable, "-m", "gitops_nodes", "apply", str(root), "--project", project]
    first = started(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = started(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert sum("No changes." in out for out, _ in outputs) == 1
    assert sorted(i.index for i in runtime.list_instances(project)) == [0, 1]


def test_plan_graph_orders_build_before_create(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api", "1"))
    # Build images are content-addressed and shared: make this context one nobody built yet.
    (root / "app" / "unique.txt").write_text(project)
    plan = make_plan(project, load_spec(root), workflow.observe(runtime, project, state))
    builds = [s.id for s in plan.steps() if s.step is Step.BUILD]
    assert len(builds) == 1
    assert nx.has_path(plan.graph, builds[0], "create api/0")
