"""The Swarm runtime on a one-node swarm made by the test session (fixture `swarm`).

What these cover: apply, scaling, rolling replacement with zero failed requests through the
balancer service, a failed replacement rolled back by Swarm, drift healed, destroy leaving the
swarm as it was, plan showing the same actions as the docker runtime, and a python node.
Traffic goes only to 127.0.0.1: the balancer's host-mode ports bind every address of the host
(Swarm has no host address for them), and the tests call them on loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.statedir import StateDir
from tests import waiting

from .helpers import alias_yaml, comparable_plan, node_yaml

Repo = Callable[[str], Path]
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port free on every address (host-mode published ports bind them all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SwarmRepo:
    """A repo deployed onto the swarm: its folder, project, state and balancer ports."""

    root: Path
    project: str
    state: StateDir
    port: int
    admin_port: int

    def write(self, spec: str) -> None:
        (self.root / "spec.yaml").write_text(spec.lstrip("\n"))

    def cli(self, *args: str, runtime: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GITOPS_NODES_STATE_DIR": str(self.state.path.parent)}
        command = [sys.executable, "-m", "gitops_nodes", *args, "--project", self.project]
        if runtime is not None:
            command += ["--runtime", runtime]
        return subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=600, check=False
        )

    def apply(self) -> subprocess.CompletedProcess[str]:
        result = self.cli("apply", str(self.root))
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def get(self, path: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            return response.status, json.loads(body) if body.startswith(b"{") else body
        finally:
            conn.close()

    def versions(self, count: int = 20) -> Counter[str]:
        """Which versions answer count calls to the alias api through the balancer."""
        seen: Counter[str] = Counter()
        for _ in range(count):
            status, body = self.get("/aliases/api/")
            assert status == 200, body
            seen[body["version"]] += 1
        return seen

    def status(self) -> dict[str, Any]:
        result = self.cli("status", str(self.root), "--json")
        assert result.returncode == 0, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document


@pytest.fixture
def swarm_repo(app_repo: Repo, swarm_project: str, tmp_path: Path) -> Callable[[str], SwarmRepo]:
    """A repo whose gitops-nodes.yaml says `runtime: swarm`, on ports free now."""

    def make(spec: str) -> SwarmRepo:
        root = app_repo(spec)
        port, admin = free_port(), free_port()
        (root / "gitops-nodes.yaml").write_text(
            f"runtime: swarm\nswarm: {{port: {port}, adminPort: {admin}}}\n"
        )
        state = StateDir.for_project(swarm_project, tmp_path / "state")
        return SwarmRepo(root, swarm_project, state, port, admin)

    return make


def wait_until(condition: Callable[[], Any], what: str, within: float = 30.0) -> Any:
    """tests.waiting.wait_until with a swarm's pace: tasks take seconds, not milliseconds."""
    return waiting.wait_until(condition, what, within, every=0.1)


def service(docker_client: Any, name: str) -> dict[str, Any]:
    found: dict[str, Any] = docker_client.api.inspect_service(name)
    return found


def running_tasks(docker_client: Any, name: str) -> list[dict[str, Any]]:
    tasks = docker_client.api.tasks(filters={"service": name, "desired-state": "running"})
    return [t for t in tasks if t["Status"]["State"] == "running"]


@dataclass
class Load:
    """Clients calling the alias through the balancer until stopped; every failure kept."""

    port: int
    clients: int = 4
    served: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, deadline: float) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    conn.request("GET", "/aliases/api/")
                    response = conn.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    with self.lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    continue
                with self.lock:
                    if response.status == 200:
                        self.served[json.loads(body)["version"]] += 1
                    else:
                        self.failures.append(f"{response.status} {body[:200]!r}")
                time.sleep(0.002)  # pacing the load, not synchronising
        finally:
            conn.close()


@pytest.fixture
def load() -> Iterator[Callable[[int], Load]]:
    started: list[tuple[Load, list[threading.Thread]]] = []

    def start(port: int) -> Load:
        running = Load(port)
        deadline = time.monotonic() + 300
        threads = [
            threading.Thread(target=running.run, args=(deadline,), daemon=True)
            for _ in range(running.clients)
        ]
        for thread in threads:
            thread.start()
        started.append((running, threads))
        return running

    yield start
    for running, threads in started:
        running.stop.set()
        for thread in threads:
            thread.join(timeout=15)


def finish(running: Load) -> Load:
    running.stop.set()
    time.sleep(0)  # let the clients see it; join happens in the fixture
    return running


# -- tests ------------------------------------------------------------------------------------


def test_apply_serves_through_the_balancer_service_then_no_changes(
    swarm_repo: Callable[[str], SwarmRepo], docker_client: Any
) -> None:
    repo = swarm_repo(node_yaml("api", "1", instances=2) + alias_yaml("api", {"api": 100}))

    first = repo.apply()

    assert "Apply complete" in first.stdout
    assert repo.versions() == Counter({"1": 20})
    api = service(docker_client, f"{repo.project}-api")
    assert api["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
    assert api["Spec"]["UpdateConfig"]["Order"] == "start-first"
    assert api["Spec"]["Labels"]["io.gitops-nodes.node"] == "api"
    assert len(running_tasks(docker_client, f"{repo.project}-api")) == 2
    balancer = service(docker_client, f"{repo.project}--balancer")
    ports = balancer["Endpoint"]["Ports"]
    assert {(p["PublishedPort"], p["PublishMode"]) for p in ports} == {
        (repo.port, "host"),
        (repo.admin_port, "host"),
    }
    again = repo.cli("plan", str(repo.root), "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("No changes.")
    view = repo.status()
    (node,) = view["nodes"]
    assert node["status"] == "Healthy"
    assert [i["status"] for i in node["instances"]] == ["Healthy", "Healthy"]
    assert all(not i["address"].startswith("127.") for i in node["instances"])  # overlay
    second = repo.apply()
    assert "No changes." in second.stdout


def test_scaling_up_and_down_follows_the_spec(
    swarm_repo: Callable[[str], SwarmRepo], docker_client: Any, load: Callable[[int], Load]
) -> None:
    repo = swarm_repo(node_yaml("api", "1", instances=2) + alias_yaml("api", {"api": 100}))
    repo.apply()
    running = load(repo.port)

    repo.write(node_yaml("api", "1", instances=3) + alias_yaml("api", {"api": 100}))
    up = repo.apply()
    assert "create api/2" in up.stdout
    assert len(running_tasks(docker_client, f"{repo.project}-api")) == 3
    repo.write(node_yaml("api", "1", instances=1) + alias_yaml("api", {"api": 100}))
    down = repo.apply()

    assert down.stdout.count("remove ") == 2
    assert len(running_tasks(docker_client, f"{repo.project}-api")) == 1
    assert [i["index"] for i in repo.status()["nodes"][0]["instances"]] == [0]
    assert repo.cli("plan", str(repo.root), "--detailed-exitcode").returncode == 0
    finish(running)
    assert running.failures == [] and running.served["1"] > 0


def test_rolling_replacement_fails_no_request_through_the_balancer(
    swarm_repo: Callable[[str], SwarmRepo], docker_client: Any, load: Callable[[int], Load]
) -> None:
    repo = swarm_repo(node_yaml("api", "1", instances=2) + alias_yaml("api", {"api": 100}))
    repo.apply()
    old = {t["ID"] for t in running_tasks(docker_client, f"{repo.project}-api")}
    running = load(repo.port)
    wait_until(lambda: running.served["1"] > 20, "the load to be served")

    repo.write(node_yaml("api", "2", instances=2) + alias_yaml("api", {"api": 100}))
    replaced = repo.apply()

    assert '-/+ node "api"' in replaced.stdout
    wait_until(lambda: running.served["2"] > 20, "version 2 to serve the load")
    finish(running)
    assert running.failures == [], running.failures[:5]
    assert repo.versions() == Counter({"2": 20})
    tasks = running_tasks(docker_client, f"{repo.project}-api")
    assert len(tasks) == 2 and not old & {t["ID"] for t in tasks}
    update = service(docker_client, f"{repo.project}-api").get("UpdateStatus") or {}
    assert update.get("State") in ("updating", "completed")  # Swarm's own rolling update


def test_a_lost_state_directory_starts_from_the_table_the_balancers_serve(
    swarm_repo: Callable[[str], SwarmRepo], docker_client: Any, load: Callable[[int], Load]
) -> None:
    """A state directory lost (a fresh CI runner): the plan reads the table the balancers
    serve, so it shows no alias or table change, and `apply --adopt` under load takes the
    services over without a task replaced and without a failed request."""
    repo = swarm_repo(node_yaml("api", "1", instances=2) + alias_yaml("api", {"api": 100}))
    repo.apply()
    tasks = {t["ID"] for t in running_tasks(docker_client, f"{repo.project}-api")}
    shutil.rmtree(repo.state.path)
    running = load(repo.port)
    wait_until(lambda: running.served["1"] > 20, "the load to be served")

    planned = repo.cli("plan", str(repo.root), "--adopt", "--json")
    assert planned.returncode == 0, planned.stderr
    document = json.loads(planned.stdout)
    assert document["changes"] == [], document["changes"]
    text = repo.cli("plan", str(repo.root), "--adopt")
    assert text.returncode == 0 and text.stdout.startswith("No changes."), text.stdout
    assert not repo.state.table.exists()  # plan wrote nothing
    taken = repo.cli("apply", str(repo.root), "--adopt")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    wait_until(lambda: running.served["1"] > 200, "the load to go on after the apply")
    finish(running)

    assert running.failures == [], running.failures[:5]
    assert {t["ID"] for t in running_tasks(docker_client, f"{repo.project}-api")} == tasks
    again = repo.cli("plan", str(repo.root), "--detailed-exitcode")
    assert again.returncode == 0 and again.stdout.startswith("No changes."), again.stdout


def test_a_replacement_that_never_becomes_healthy_is_rolled_back(
    swarm_repo: Callable[[str], SwarmRepo], docker_client: Any, load: Callable[[int], Load]
) -> None:
    repo = swarm_repo(node_yaml("api", "1", instances=2) + alias_yaml("api", {"api": 100}))
    repo.apply()
    running = load(repo.port)

    broken = node_yaml("api", "2", instances=2, extra_env=', HEALTH: "fail"').replace(
        "startTimeout: 15s", "startTimeout: 4s"
    )
    repo.write(broken + alias_yaml("api", {"api": 100}))
    failed = repo.cli("apply", str(repo.root))

    assert failed.returncode == 1
    assert "did not become Healthy within 4s" in failed.stderr
    name = f"{repo.project}-api"
    wait_until(
        lambda: (
            (service(docker_client, name).get("UpdateStatus") or {}).get("State")
            == "rollback_completed"
        ),
        "Swarm to roll the service back",
        within=90,
    )
    finish(running)
    assert running.failures == [], running.failures[:5]
    assert repo.versions() == Counter({"1": 20})


def test_drift_is_planned_and_healed(
    swarm_repo: Callable[[str], SwarmRepo], docker_client: Any
) -> None:
    repo = swarm_repo(node_yaml("api", "1", instances=2) + alias_yaml("api", {"api": 100}))
    repo.apply()
    name = f"{repo.project}-api"

    docker_client.api.update_service(  # scaled by hand, behind gitops-nodes' back
        name,
        service(docker_client, name)["Version"]["Index"],
        **_same_spec(service(docker_client, name), replicas=4),
    )
    wait_until(lambda: len(running_tasks(docker_client, name)) == 4, "the hand-made scale")
    planned = repo.cli("plan", str(repo.root), "--json")
    (change,) = json.loads(planned.stdout)["changes"][:1]
    assert change["action"] == "~"
    assert sorted(i["action"] for i in change["instances"]) == ["-", "-"]
    repo.apply()
    assert len(running_tasks(docker_client, name)) == 2

    docker_client.api.remove_service(name)  # the node's service removed by hand
    wait_until(lambda: repo.get("/aliases/api/")[0] == 503, "the alias to lose its instances")
    planned = repo.cli("plan", str(repo.root), "--json")
    (change,) = json.loads(planned.stdout)["changes"][:1]
    assert [i["action"] for i in change["instances"]] == ["+", "+"]
    repo.apply()
    assert repo.versions() == Counter({"1": 20})
    assert repo.cli("plan", str(repo.root), "--detailed-exitcode").returncode == 0


def _same_spec(current: dict[str, Any], replicas: int) -> dict[str, Any]:
    spec = current["Spec"]
    return {
        "task_template": spec["TaskTemplate"],
        "name": spec["Name"],
        "labels": spec["Labels"],
        "mode": {"Replicated": {"Replicas": replicas}},
        "update_config": spec.get("UpdateConfig"),
        "rollback_config": spec.get("RollbackConfig"),
        "endpoint_spec": spec.get("EndpointSpec"),
    }


def _swarm_objects(docker_client: Any) -> dict[str, set[str]]:
    api = docker_client.api
    return {
        "services": {s["ID"] for s in api.services()},
        "networks": {n["Id"] for n in api.networks()},
        "secrets": {s["ID"] for s in api.secrets()},
        "configs": {c["ID"] for c in api.configs()},
    }


def test_destroy_leaves_the_swarm_as_it_found_it(
    swarm_repo: Callable[[str], SwarmRepo], docker_client: Any
) -> None:
    repo = swarm_repo(node_yaml("api", "1") + alias_yaml("api", {"api": 100}))
    before = _swarm_objects(docker_client)
    repo.apply()
    during = _swarm_objects(docker_client)
    assert len(during["services"] - before["services"]) == 2  # the node and the balancer

    destroyed = repo.cli("destroy", str(repo.root))

    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    after = _swarm_objects(docker_client)
    mine = {k: v - before[k] for k, v in after.items()}
    assert mine == {"services": set(), "networks": set(), "secrets": set(), "configs": set()}
    selector = {"label": [f"io.gitops-nodes.project={repo.project}"]}
    assert docker_client.api.containers(all=True, filters=selector) == []
    assert docker_client.api.images(filters=selector) == []
    built_for = {"label": [f"io.gitops-nodes.built-for={repo.project}"]}
    assert docker_client.api.images(filters=built_for) == []
    assert not repo.state.table.exists()
    assert not (repo.state.path / "balancer-token").exists()


def test_plan_shows_the_same_actions_for_both_runtimes(
    swarm_repo: Callable[[str], SwarmRepo], project: str, tmp_path: Path
) -> None:
    spec = node_yaml("api", "1", instances=2) + alias_yaml("api", {"api": 100})
    on_swarm = swarm_repo(spec)
    on_docker = SwarmRepo(
        on_swarm.root, project, StateDir.for_project(project, tmp_path / "docker"), 0, 0
    )

    def plans() -> tuple[dict[str, Any], dict[str, Any]]:
        swarm_plan = on_swarm.cli("plan", str(on_swarm.root), "--json")
        docker_plan = on_docker.cli("plan", str(on_docker.root), "--json", runtime="docker")
        assert swarm_plan.returncode == 0, swarm_plan.stderr
        assert docker_plan.returncode == 0, docker_plan.stderr
        return json.loads(swarm_plan.stdout), json.loads(docker_plan.stdout)

    swarm_plan, docker_plan = plans()  # from nothing
    assert comparable_plan(swarm_plan) == comparable_plan(docker_plan)
    assert swarm_plan["changes"] and swarm_plan["specDigest"] == docker_plan["specDigest"]

    on_swarm.apply()  # the same repo on both: the settings file says swarm, the flag docker
    applied = on_docker.cli("apply", str(on_docker.root), runtime="docker")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    on_swarm.write(  # an env change (replace), a second node, an alias over both
        node_yaml("api", "2", instances=2)
        + node_yaml("extra", "1")
        + alias_yaml("api", {"api": 50, "extra": 50})
    )

    swarm_plan, docker_plan = plans()
    assert comparable_plan(swarm_plan) == comparable_plan(docker_plan)
    assert [c["action"] for c in swarm_plan["changes"]] == ["-/+", "+", "~"]
    destroyed = on_docker.cli("destroy", str(on_docker.root), runtime="docker")
    assert destroyed.returncode == 0, destroyed.stderr


def test_a_python_node_runs_on_the_swarm(
    swarm_repo: Callable[[str], SwarmRepo], tmp_path: Path
) -> None:
    python_node = """
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: api}
spec:
  python:
    code: model/predict.py
    inputs: {x: float}
    outputs: {y: float}
  healthCheck: {path: /healthz, interval: 200ms, startTimeout: 60s}
---
"""
    repo = swarm_repo(python_node + alias_yaml("api", {"api": 100}))
    (repo.root / "model").mkdir()
    (repo.root / "model" / "predict.py").write_text("y = x * 2\n")

    repo.apply()

    conn = http.client.HTTPConnection(LOOPBACK, repo.port, timeout=10)
    try:
        conn.request("POST", "/aliases/api/", body=json.dumps({"x": 2.5}))
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200, body
    assert body == {"y": 5.0}


def test_watch_on_a_work_tree_deploys_to_the_swarm_and_heals_drift(
    swarm_repo: Callable[[str], SwarmRepo], docker_client: Any
) -> None:
    repo = swarm_repo(node_yaml("api", "1", instances=2) + alias_yaml("api", {"api": 100}))
    admin = free_port()
    log = repo.root.parent / "watch.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitops_nodes",
                "watch",
                str(repo.root),  # a work tree: its gitops-nodes.yaml says runtime: swarm
                "--project",
                repo.project,
                "--state-dir",
                str(repo.state.path.parent),
                "--interval",
                "2s",
                "--admin-port",
                str(admin),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    name = f"{repo.project}-api"

    def serves(version: str) -> bool:
        try:
            return repo.versions(5) == Counter({version: 5})
        except (AssertionError, OSError, http.client.HTTPException, ValueError, KeyError):
            return False

    try:
        within = 240.0  # the first reconcile also builds the balancer's image

        def alive(condition: Callable[[], bool]) -> Callable[[], bool]:
            def check() -> bool:
                assert process.poll() is None, log.read_text()[-3000:]
                return condition()

            return check

        wait_until(alive(lambda: serves("1")), "watch to serve version 1", within)
        docker_client.api.update_service(
            name,
            service(docker_client, name)["Version"]["Index"],
            **_same_spec(service(docker_client, name), replicas=4),
        )

        def replicas() -> int:
            return int(service(docker_client, name)["Spec"]["Mode"]["Replicated"]["Replicas"])

        wait_until(alive(lambda: replicas() == 2), "watch to scale the service back", 60)
        repo.write(node_yaml("api", "2", instances=2) + alias_yaml("api", {"api": 100}))
        wait_until(alive(lambda: serves("2")), "watch to roll out version 2", 120)
    finally:
        process.terminate()
        code = process.wait(timeout=90)
    assert code == 0, log.read_text()[-3000:]
    assert "on swarm" in log.read_text()
