"""Small helpers the integration tests share: specs of the test service and of python nodes,
reading back, the processes they run (`serve`, `watch`), and bounded load over real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from balancer.table import RoutingTable, read_table
from gitops_nodes import workflow
from gitops_nodes.apply import ApplyOptions, StepResult
from gitops_nodes.health import probe
from gitops_nodes.runtime.docker import DockerRuntime, free_loopback_port
from gitops_nodes.spec.load import load_spec
from gitops_nodes.statedir import StateDir, balancer_acks

HOOK_TOKEN = "test-hook-token"
# The python node's code: a linear model that counts its calls and refuses a negative start.
PYTHON_CODE = """
calls = globals().get("calls", 0) + 1
if features and features[0] < 0:
    raise ValueError("negative first feature")
score = sum(w * x for w, x in zip(weights, features)) + bias
"""


def node_yaml(
    name: str,
    version: str,
    instances: int = 1,
    min_healthy: int = 1,
    extra_env: str = "",
    extra_spec: str = "",
) -> str:
    """A Node of the test service; extra_spec is more lines under spec (two-space indented)."""
    return f"""
apiVersion: gitops-nodes/v1
kind: Node
metadata: {{name: {name}}}
spec:
  image: {{build: app, port: 8080}}
  instances: {instances}
  minHealthy: {min_healthy}
  env: {{VERSION: "{version}"{extra_env}}}
  healthCheck: {{path: /healthz, interval: 200ms, timeout: 1s, startTimeout: 15s}}
{extra_spec}---
"""


def python_node(name: str, checkpoint: str = "model/state.pkl") -> str:
    """A python Node running PYTHON_CODE from the model_repo fixture's folder."""
    return textwrap.dedent(
        f"""
        apiVersion: gitops-nodes/v1
        kind: Node
        metadata: {{name: {name}}}
        spec:
          python:
            code: model/predict.py
            checkpoint: {checkpoint}
            inputs: {{features: "list[float]"}}
            outputs: {{score: float, calls: int}}
          healthCheck: {{path: /healthz, interval: 200ms, startTimeout: 20s}}
        ---
        """
    )


def alias_yaml(name: str, routes: dict[str, int]) -> str:
    lines = "".join(f"    - {{node: {n}, weight: {w}}}\n" for n, w in routes.items())
    return f"""
apiVersion: gitops-nodes/v1
kind: Alias
metadata: {{name: {name}}}
spec:
  nodes:
{lines}---
"""


def apply(
    root: Path,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    on_result: Callable[[StepResult], None] | None = None,
) -> workflow.ApplyRun:
    return workflow.apply(
        load_spec(root),
        runtime,
        project,
        state,
        ApplyOptions(drain_timeout=10, stop_grace=2),
        on_result=on_result,
    )


def table(state: StateDir) -> RoutingTable:
    found = read_table(state.table)
    assert found is not None, "apply published no routing table"
    return found


def get_json(port: int, path: str = "/") -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def healthy_instances(runtime: DockerRuntime, project: str, node: str) -> int:
    """How many of the node's instances pass their health check right now."""
    from balancer.table import HealthSettings

    check = HealthSettings(path="/healthz", timeout=1.0)
    return sum(
        1
        for i in runtime.list_instances(project)
        if i.node == node and i.state == "running" and i.port and probe(i.port, check).healthy
    )


# The same free loopback port the docker runtime chooses for an instance.
free_port = free_loopback_port


def wait_until_serving(
    state: StateDir,
    process: subprocess.Popen[Any],
    output: Callable[[], str],
    within: float = 15.0,
) -> None:
    """Poll until a started balancer reports to the state folder; its output if it exits."""
    deadline = time.monotonic() + within
    while not balancer_acks(state):
        assert process.poll() is None, output()
        assert time.monotonic() < deadline, "the balancer did not start"
        time.sleep(0.05)


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


def get_status_json(
    connection: http.client.HTTPConnection, path: str
) -> tuple[int, dict[str, str]]:
    """GET path on a kept-alive connection: the status and the JSON body."""
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def wait_for_version(port: int, path: str, version: str) -> None:
    deadline = time.monotonic() + 15
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while True:
        status, body = get_status_json(connection, path)
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
                status, body = get_status_json(connection, self.path)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.failures.append(repr(exc))
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            if status != 200:
                self.failures.append(f"{status} {body}")
            else:
                self.versions[body["version"]] += 1


class Watch:
    """A `gitops-nodes watch` process following a repository made for the test."""

    def __init__(
        self,
        repo: Path,
        project: str,
        state: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.repo = repo
        self.project = project
        self.port, self.admin = free_port(), free_port()
        env = {**os.environ, "GITOPS_NODES_HOOK_TOKEN": HOOK_TOKEN, **(env or {})}
        state.mkdir(parents=True, exist_ok=True)
        self.log = state / f"watch-{self.port}.log"
        self.log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitops_nodes",
                "watch",
                f"file://{repo}",
                "--project",
                project,
                "--state-dir",
                str(state),
                "--interval",
                "1s",
                "--port",
                str(self.port),
                "--admin-port",
                str(self.admin),
                *args,
            ],
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )

    def commit(self, spec: str, message: str) -> str:
        (self.repo / "spec.yaml").write_text(spec)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", message)
        return git(self.repo, "rev-parse", "HEAD")

    def hook(self, token: str = HOOK_TOKEN) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        connection.request("POST", "/-/hooks/git", headers={"authorization": f"Bearer {token}"})
        response = connection.getresponse()
        response.read()
        return response.status

    def status(self) -> dict[str, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        connection.request("GET", "/-/status")
        data: dict[str, Any] = json.loads(connection.getresponse().read())
        watch: dict[str, Any] = data["watch"]
        return watch

    def wait(self, condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.output()}"
            time.sleep(0.05)

    def applied(self, revision: str) -> bool:
        try:
            return bool(self.status()["appliedRevision"] == revision)
        except (OSError, ValueError, KeyError):
            return False

    def versions(self, count: int = 40) -> set[str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        seen = set()
        for _ in range(count):
            connection.request("GET", "/aliases/api/predict")
            response = connection.getresponse()
            body = json.loads(response.read())
            assert response.status == 200, body
            seen.add(body["version"])
        return seen

    def serves(self, versions: set[str]) -> bool:
        try:
            return self.versions(5) == versions
        except (AssertionError, OSError, http.client.HTTPException, ValueError):
            return False  # not listening yet, or not serving these versions yet

    def output(self) -> str:
        """The watch process's last log lines, for failure messages."""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-40:])

    def stop(self) -> int:
        self.process.terminate()
        code = self.process.wait(timeout=60)
        self.log_file.close()
        return code


def comparable_plan(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan without what names the live instances (task names differ from containers')."""
    changes = [
        {**c, "instances": [{**i, "old": bool(i["old"])} for i in c.get("instances", ())]}
        for c in plan["changes"]
    ]
    steps = sorted(
        repr((s["step"], s.get("node"), s.get("index"), s.get("alias"), "instance" in s))
        for s in plan["steps"]
    )
    return {"changes": changes, "summary": plan["summary"], "steps": steps}


def remove_networks(api: Any, selector: dict[str, list[str]], deadline: float) -> None:
    """Remove the networks selector matches, retrying each until deadline (monotonic): a
    network is in use for a little while after the tasks on it stopped."""
    for network in api.networks(filters=selector):
        while True:
            try:
                api.remove_network(network["Id"])
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # tasks detach from it a little after they stop
