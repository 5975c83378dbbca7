"""Endpoint settings, the maintenance limit and suspend/resume on the real engine, over HTTP.

Every request goes through a real `gitops-nodes serve` (or `watch`) process to real
containers; every assertion on what exists reads it back from Docker's labels.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gitops_nodes import workflow
from gitops_nodes.apply import Outcome, StepResult
from gitops_nodes.plan import Step, make_plan
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.spec.load import load_spec
from gitops_nodes.statedir import StateDir, balancer_acks
from tests.waiting import wait_until

from .helpers import Load, Watch, alias_yaml, apply, git, node_yaml, table, wait_for_version

Repo = Callable[[str], Path]
Serve = Callable[[], int]


def node(name: str, version: str, extra: str = "", instances: int = 1) -> str:
    """node_yaml's node with more lines under spec (two-space indented YAML)."""
    return node_yaml(name, version, instances=instances).replace("spec:\n", f"spec:\n{extra}", 1)


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def containers(runtime: DockerRuntime, project: str, node_name: str) -> dict[str, str]:
    """The node's containers, name -> the engine's state, as the labels list them."""
    return {i.name: i.state for i in runtime.list_instances(project) if i.node == node_name}


def plan_is_empty(root: Path, runtime: DockerRuntime, project: str, state: StateDir) -> bool:
    live = workflow.observe(runtime, project, state)
    return make_plan(project, load_spec(root), live).empty


def wait_served(state: StateDir, generation: int, within: float = 15.0) -> None:
    """Until every running balancer serves the table generation apply published."""
    wait_until(
        lambda: all(a.generation >= generation for a in balancer_acks(state)),
        f"balancers to reach generation {generation}",
        within,
        every=0.05,
    )


def wait_status(port: int, path: str, code: int, within: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        status, body = get(port, path)
        if status == code:
            return body
        assert time.monotonic() < deadline, (status, body)
        time.sleep(0.05)


def test_suspend_routes_around_the_node_and_resume_restarts_it_without_a_rebuild(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve: Serve,
) -> None:
    aliases = alias_yaml("api", {"a": 50, "b": 50}) + alias_yaml("solo", {"a": 100})
    spec = node("a", "1", instances=2) + node("b", "2") + aliases
    root = app_repo(spec)
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    port = serve()
    wait_for_version(port, "/aliases/solo/", "1")
    before = containers(runtime, project, "a")
    image = load_spec(root).nodes["a"].config.image  # built by the first apply
    assert set(before.values()) == {"running"}

    # Suspend a: its instances stop, kept; the alias routes around it; solo answers 503.
    app_repo(node("a", "1", "  suspended: true\n", instances=2) + node("b", "2") + aliases)
    steps: list[StepResult] = []
    run = apply(root, runtime, project, state, on_result=steps.append)
    assert run.report is not None and run.report.ok, run.report
    assert sorted(r.step.step for r in steps) == [Step.PUBLISH, Step.STOP, Step.STOP]
    assert containers(runtime, project, "a") == dict.fromkeys(before, "exited")
    assert plan_is_empty(root, runtime, project, state)
    assert table(state).nodes["a"].suspended and table(state).nodes["a"].endpoints == ()
    wait_served(state, table(state).generation)
    assert {get(port, "/aliases/api/")[1]["version"] for _ in range(20)} == {"2"}
    for path, words in (
        ("/aliases/solo/", "no Healthy instance serves alias 'solo' (suspended: a)"),
        ("/nodes/a/", "node 'a' is suspended"),
    ):
        code, body = get(port, path)
        assert (code, body["error"]) == (503, words)
    view = workflow.status(runtime, project, state, load_spec(root))
    a = next(n for n in view.nodes if n.name == "a")
    assert a.status == "Suspended"
    assert [i.status for i in a.instances] == ["Suspended", "Suspended"]

    # Resume: the same containers start again; nothing is built or created.
    app_repo(spec)
    steps.clear()
    run = apply(root, runtime, project, state, on_result=steps.append)
    assert run.report is not None and run.report.ok, run.report
    kinds = {r.step.step for r in steps}
    assert Step.START in kinds and not kinds & {Step.BUILD, Step.CREATE, Step.REMOVE}, steps
    assert containers(runtime, project, "a") == dict.fromkeys(before, "running")
    assert image in runtime.list_images(project)  # kept while suspended, never rebuilt
    configs = {i.config for i in runtime.list_instances(project) if i.node == "a"}
    assert {c.image for c in configs if c is not None} == {image}
    assert plan_is_empty(root, runtime, project, state)
    assert wait_status(port, "/aliases/solo/", 200)["version"] == "1"
    view = workflow.status(runtime, project, state, load_spec(root))
    assert next(n for n in view.nodes if n.name == "a").status == "Healthy"


def test_a_maintenance_limit_of_2_replaces_3_instances_in_2_batches_with_no_failure(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve: Serve,
) -> None:
    limit = "  maintenanceLimit: 2\n"
    root = app_repo(node("api", "1", limit, instances=3) + alias_yaml("api", {"api": 1}))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    old = sorted(containers(runtime, project, "api"))
    port = serve()
    wait_for_version(port, "/aliases/api/", "1")

    ended: dict[str, tuple[float, float]] = {}  # step id -> (start, end), monotonic
    most = [0]
    stop = threading.Event()

    def record(result: StepResult) -> None:
        now = time.monotonic()
        ended[result.step.id] = (now - result.seconds, now)

    def count() -> None:  # bounded: ends with the apply, one listing per 50 ms at most
        while not stop.is_set():
            most[0] = max(most[0], len(runtime.list_instances(project)))
            stop.wait(0.05)

    counter = threading.Thread(target=count)
    with Load(port, "/aliases/api/predict", threads=2) as load:
        app_repo(node("api", "2", limit, instances=3) + alias_yaml("api", {"api": 1}))
        counter.start()
        try:
            run = apply(root, runtime, project, state, on_result=record)
        finally:
            stop.set()
            counter.join(timeout=30)
        assert run.report is not None and run.report.ok, run.report
        wait_for_version(port, "/aliases/api/", "2")
    assert load.failures == [], load.failures[:5]
    assert load.versions["1"] > 0 and load.versions["2"] > 0, load.versions

    batches = run.plan.to_json()["changes"][0]["maintenance"]
    assert batches == {"limit": 2, "batches": [[0, 1], [2]]}
    # Each instance's maintenance: from its replacement's creation to its own removal.
    windows = [(ended[f"create api/{i}"][0], ended[f"remove {old[i]}"][1]) for i in range(3)]
    assert windows[0][0] < windows[1][1] and windows[1][0] < windows[0][1]  # side by side
    assert windows[2][0] >= max(windows[0][1], windows[1][1])  # the next batch after
    assert most[0] <= 3 + 2, most[0]
    assert len(containers(runtime, project, "api")) == 3
    assert plan_is_empty(root, runtime, project, state)


def test_endpoint_timeouts_apply_in_place_and_bound_requests(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve: Serve,
) -> None:
    def spec(timeout: str) -> str:
        extra = f"  endpoint: {{timeout: {timeout}, idleTimeout: 30s}}\n"
        return node("api", "1", extra) + alias_yaml("api", {"api": 1})

    root = app_repo(spec("1s"))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    port = serve()
    wait_for_version(port, "/aliases/api/", "1")
    before = containers(runtime, project, "api")

    began = time.monotonic()
    code, body = get(port, "/aliases/api/slow?ms=4000")
    assert (code, body["node"]) == (504, "api"), body
    assert "the node's request timeout" in body["error"]
    assert time.monotonic() - began < 3.5

    app_repo(spec("10s"))
    steps: list[StepResult] = []
    run = apply(root, runtime, project, state, on_result=steps.append)
    assert run.report is not None and run.report.ok
    assert [(r.step.id, r.outcome) for r in steps] == [("publish node api", Outcome.DONE)]
    assert containers(runtime, project, "api") == before  # no container replaced
    published = table(state).nodes["api"].timeouts
    assert (published.request, published.idle) == (10.0, 30.0)
    assert plan_is_empty(root, runtime, project, state)
    wait_served(state, table(state).generation)
    code, body = get(port, "/aliases/api/slow?ms=2000")
    assert (code, body["version"]) == (200, "1")


def test_watch_keeps_a_suspended_node_stopped(
    watch: Callable[[str], Watch],
    runtime: DockerRuntime,
    project: str,
) -> None:
    both = node_yaml("v1", "1") + node_yaml("v2", "2") + alias_yaml("api", {"v1": 50, "v2": 50})
    watcher = watch(both)
    first = git(watcher.repo, "rev-parse", "HEAD")
    watcher.wait(lambda: watcher.applied(first), "the first commit")
    watcher.wait(lambda: watcher.serves({"1", "2"}), "both nodes serving")

    suspended = both.replace(
        "metadata: {name: v2}\nspec:\n", "metadata: {name: v2}\nspec:\n  suspended: true\n"
    )
    assert suspended != both
    second = watcher.commit(suspended, "suspend v2")
    assert watcher.hook() == 202
    watcher.wait(lambda: watcher.applied(second), "the suspend commit")
    (name,) = containers(runtime, project, "v2")
    watcher.wait(lambda: containers(runtime, project, "v2") == {name: "exited"}, "v2 stopped")
    assert watcher.serves({"1"})

    # Started by hand: drift, and the loop stops it again rather than keeping it.
    runtime.start_instance(project, name)
    watcher.wait(
        lambda: containers(runtime, project, "v2") == {name: "exited"},
        "v2 stopped again",
        seconds=30,
    )
    # Later reconciles (the interval is 1 s) find nothing to do and leave it stopped.
    since = time.time()
    watcher.wait(
        lambda: (
            (watcher.status()["lastReconcile"] or {}).get("startedAt", 0) > since
            and watcher.status()["lastReconcile"]["outcome"] == "unchanged"
        ),
        "a reconcile with nothing to do",
    )
    assert containers(runtime, project, "v2") == {name: "exited"}
    assert watcher.serves({"1"})
    assert watcher.stop() == 0
