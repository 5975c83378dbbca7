"""The safety rules on the real engine, as a user meets the failures they prevent: a killed
apply re-run onto instances that never turn Healthy, weights moved onto a node that turned
sick (R-route), an empty repository under apply and watch (R-prune), a rollout nobody calls
(R-data), and under watch an instance whose checks keep failing, or whose code hangs, replaced
make-before-break. Each failed on the code before the rules."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir, balancer_acks
from tests.waiting import wait_until

from .helpers import Watch, alias_yaml, node_yaml, table
from .test_apply import cli

Repo = Callable[[str], Path]
SICK = ', SICK_FILE: "/tmp/sick"'
FAST_START = "  healthCheck: {path: /healthz, interval: 200ms, timeout: 1s, startTimeout: 6s}\n"


def fast(node: str) -> str:
    """A node spec whose start timeout is 6 s rather than 15 s: failing waits end sooner."""
    return node.replace(
        "  healthCheck: {path: /healthz, interval: 200ms, timeout: 1s, startTimeout: 15s}\n",
        FAST_START,
    )


def alias_versions(port: int, count: int = 20) -> list[tuple[int, str]]:
    """(status, version or error) of count requests to alias api through a balancer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    seen = []
    for _ in range(count):
        connection.request("GET", "/aliases/api/")
        response = connection.getresponse()
        body = json.loads(response.read())
        seen.append((response.status, str(body.get("version", body.get("error")))))
    connection.close()
    return seen


def test_a_killed_apply_rerun_onto_instances_that_never_turn_healthy_fails_and_the_alias_stays(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve: Callable[[], int],
) -> None:
    root = app_repo(node_yaml("v1", "1") + alias_yaml("api", {"v1": 100}))
    assert cli("apply", str(root), state=state, project=project).returncode == 0
    port = serve()
    app_repo(
        fast(node_yaml("v2", "2", extra_env=', HEALTH: "fail"')) + alias_yaml("api", {"v2": 100})
    )
    env = {**os.environ, "GITOPS_NODES_STATE_DIR": str(state.path.parent)}
    killed = subprocess.Popen(
        [sys.executable, "-m", "gitops_nodes", "apply", str(root), "--project", project],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: any(
                i.node == "v2" and i.state == "running" for i in runtime.list_instances(project)
            ),
            "v2's first container to start",
            within=60,
            every=0.05,
        )
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert table(state).aliases["api"].targets == (("v1", 100),)

    rerun = cli("apply", str(root), state=state, project=project)

    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    assert "~ adopt instance 0" in rerun.stdout, rerun.stdout
    assert "failed: wait v2/0" in rerun.stderr, rerun.stderr
    assert "did not become Healthy within 6s" in rerun.stderr
    assert "not started: publish alias api (upstream failed: wait v2/0)" in rerun.stderr
    assert table(state).aliases["api"].targets == (("v1", 100),)
    assert set(alias_versions(port)) == {(200, "1")}


def test_weights_moved_onto_a_node_whose_health_check_started_failing_fail_and_traffic_stays(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve: Callable[[], int],
    docker_client: object,
) -> None:
    nodes = node_yaml("a", "1") + fast(node_yaml("b", "2", extra_env=SICK))
    root = app_repo(nodes + alias_yaml("api", {"a": 100, "b": 0}))
    assert cli("apply", str(root), state=state, project=project).returncode == 0
    port = serve()
    (b,) = [i.name for i in runtime.list_instances(project) if i.node == "b"]
    wait_until(lambda: all(b in a.healthy for a in balancer_acks(state)), "b counted", within=30)
    sick = subprocess.run(
        ["docker", "exec", b, "touch", "/tmp/sick"], capture_output=True, text=True, check=False
    )
    assert sick.returncode == 0, sick.stderr
    wait_until(
        lambda: all(b not in a.healthy for a in balancer_acks(state)),
        "the balancer to count b Unhealthy",
        within=30,
    )
    app_repo(nodes + alias_yaml("api", {"a": 0, "b": 100}))

    run = cli("apply", str(root), state=state, project=project)

    assert run.returncode == 1, run.stdout + run.stderr
    assert "failed: publish alias api: alias api stays where it was" in run.stderr, run.stderr
    assert "counts 0 of b's 1 instances in rotation Healthy" in run.stderr
    assert table(state).aliases["api"].targets == (("a", 100), ("b", 0))
    assert set(alias_versions(port)) == {(200, "1")}


def test_an_empty_repository_is_refused_by_plan_and_apply_unless_allowed(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("v1", "1") + alias_yaml("api", {"v1": 100}))
    assert cli("apply", str(root), state=state, project=project).returncode == 0
    (root / "spec.yaml").unlink()

    planned = cli("plan", str(root), state=state, project=project)
    applied = cli("apply", str(root), state=state, project=project)

    for refused in (planned, applied):
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "has no Node or Alias document" in refused.stderr, refused.stderr
        assert "pass --allow-empty" in refused.stderr
    assert [i.node for i in runtime.list_instances(project)] == ["v1"]
    assert table(state).aliases["api"].targets == (("v1", 100),)
    meant = cli("apply", str(root), "--allow-empty", state=state, project=project)
    assert meant.returncode == 0, meant.stderr
    assert runtime.list_instances(project) == []


def test_an_empty_commit_under_watch_is_refused_and_the_nodes_keep_serving(
    watch: Callable[[str], Watch], runtime: DockerRuntime, project: str
) -> None:
    watcher = watch(node_yaml("v1", "1") + alias_yaml("api", {"v1": 100}))
    watcher.wait(lambda: watcher.serves({"1"}), "v1 to serve")
    first = watcher.status()["appliedRevision"]

    empty = watcher.commit("", "everything removed")
    assert watcher.hook() == 202
    watcher.wait(
        lambda: (watcher.status()["lastError"] or {}).get("revision") == empty, "the refusal"
    )

    error = watcher.status()["lastError"]
    assert error["outcome"] == "refused", error
    assert "allowEmpty: true" in error["error"]
    assert watcher.status()["appliedRevision"] == first
    assert watcher.versions() == {"1"}
    assert [i.node for i in runtime.list_instances(project)] == ["v1"]


def only_another_than(name: str, runtime: DockerRuntime, project: str) -> bool:
    """Whether the project has one instance, and it is not `name` (replaced, and removed)."""
    names = [i.name for i in runtime.list_instances(project)]
    return len(names) == 1 and name not in names


def test_watch_replaces_an_instance_whose_health_checks_keep_failing(
    watch: Callable[..., Watch], runtime: DockerRuntime, project: str
) -> None:
    # On one engine nothing else would: the container runs, refuses no connection, and its
    # node (one instance here) stays down for good. A hung process looks the same to checks.
    watcher = watch(
        node_yaml("v1", "1", extra_env=SICK) + alias_yaml("api", {"v1": 100}),
        "--replace-unhealthy-after",
        "2s",
    )
    watcher.wait(lambda: watcher.serves({"1"}), "v1 to serve")
    [hung] = [i.name for i in runtime.list_instances(project)]
    sick = subprocess.run(
        ["docker", "exec", hung, "touch", "/tmp/sick"], capture_output=True, text=True
    )
    assert sick.returncode == 0, sick.stderr

    seen: set[str] = set()

    def replaced() -> bool:
        seen.update(watcher.status()["unresponsive"])  # shown while it is being replaced
        return only_another_than(hung, runtime, project)

    watcher.wait(replaced, "the failing instance replaced and removed", 120)
    watcher.wait(lambda: watcher.serves({"1"}), "the alias to serve from the new one")
    assert f"replacing {hung}: Unhealthy" in watcher.log.read_text()
    assert seen == {hung}
    watcher.wait(lambda: watcher.status()["unresponsive"] == [], "nothing left to replace")
    assert watcher.status()["replaceUnhealthyAfter"] == 2.0
    reconciles = watcher.status()["history"]
    assert any(  # with the interval's reason too, when both came during one reconcile
        "unresponsive" in r["reason"].split(",") and r["outcome"] == "applied" for r in reconciles
    )


HANGING_CODE = """
if x < 0:
    while True:  # a request that never returns: the instance's one thread is taken for good
        pass
y = x * 2
"""
DOUBLER = """
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: doubler}
spec:
  python: {code: model/predict.py, inputs: {x: float}, outputs: {y: float}}
  healthCheck: {path: /healthz, interval: 200ms, timeout: 500ms, startTimeout: 30s}
---
"""


def post_x(port: int, x: float, timeout: float) -> tuple[int, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/aliases/double/", body=json.dumps({"x": x}))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_watch_replaces_a_python_node_whose_code_hangs(
    watch: Callable[..., Watch], runtime: DockerRuntime, project: str, tmp_path: Path
) -> None:
    model = tmp_path / "origin" / "model"  # the watch fixture's repository, before its commit
    model.mkdir(parents=True)
    (model / "predict.py").write_text(HANGING_CODE)
    watcher = watch(
        DOUBLER + alias_yaml("double", {"doubler": 100}), "--replace-unhealthy-after", "2s"
    )

    def answers() -> bool:
        try:
            return post_x(watcher.port, 2, 5) == (200, {"y": 4.0})
        except (OSError, http.client.HTTPException, ValueError):
            return False

    watcher.wait(answers, "doubler to serve")
    [hung] = [i.name for i in runtime.list_instances(project)]
    with contextlib.suppress(OSError):  # the client gives up; the instance stays hung
        post_x(watcher.port, -1, 1)

    watcher.wait(
        lambda: only_another_than(hung, runtime, project),
        "the hung instance replaced and removed",
        120,
    )
    assert answers()
    assert f"replacing {hung}: Unhealthy" in watcher.log.read_text()


def test_a_rollout_nobody_calls_is_not_promoted(
    watch: Callable[[str], Watch], runtime: DockerRuntime, project: str
) -> None:
    rollout = "spec:\n  rollout: {steps: [50], pause: 500ms, maxErrorRate: 0.1}\n"
    watcher = watch(
        node_yaml("v1", "1") + alias_yaml("api", {"v1": 100}).replace("spec:\n", rollout)
    )
    watcher.wait(lambda: watcher.serves({"1"}), "v1 to serve")
    first = watcher.status()["appliedRevision"]
    broken = node_yaml("v2", "2", extra_env=', STATUS: "500"')
    bad = watcher.commit(
        broken + alias_yaml("api", {"v2": 100}).replace("spec:\n", rollout), "v2 answers 500"
    )
    assert watcher.hook() == 202
    watcher.wait(lambda: (watcher.status()["rollout"] or {}).get("step") == 1, "step 1")

    time.sleep(5.0)  # ten pauses of 500 ms go by without a request: nothing may happen

    status = watcher.status()
    assert status["rollout"] is not None and status["rollout"]["step"] == 1, status
    assert status["rollout"]["requests"]["api"] == {
        "seen": 0,
        "minRequests": 20,
        "needed": 20,
        "nodes": ["v2"],
        "errorRate": None,  # no request: no rate to judge
        "maxErrorRate": 0.1,
    }
    assert status["appliedRevision"] == first
    assert {i.node for i in runtime.list_instances(project)} == {"v1", "v2"}
    # With traffic the step is judged, on v2's answers: rolled back.
    answers = alias_versions(watcher.port, 80)
    assert (500, "2") in answers or any(code == 500 for code, _ in answers), answers
    watcher.wait(
        lambda: (watcher.status()["lastError"] or {}).get("revision") == bad, "the rollback"
    )
    assert watcher.status()["lastError"]["outcome"] == "rolled back"
    assert watcher.status()["appliedRevision"] == first
