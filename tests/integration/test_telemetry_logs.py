"""Instances' telemetry through the balancer's /-/metrics, and `gitops-nodes logs`, on the real
engine: the test service publishes a second port for its metrics and prints its requests."""

from __future__ import annotations

import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes import workflow
from gitops_nodes.plan import make_plan
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.spec.load import load_spec
from gitops_nodes.statedir import StateDir
from tests import promtext, waiting

from .helpers import alias_yaml, apply, free_port, node_yaml, table, wait_until_serving

Repo = Callable[[str], Path]
DEADLINE = 20.0


def node_spec(name: str, instances: int, env: str = "", telemetry: str = "") -> str:
    """The test service's node at version 1, with more env entries and lines under spec."""
    return node_yaml(name, "1", instances=instances, extra_env=env, extra_spec=telemetry)


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        body: bytes = response.read()
        return body


def cli(project: str, state: StateDir, *args: str) -> list[str]:
    """argv for `gitops-nodes ARGS --project P --state-dir S` in a fresh interpreter."""
    return [
        sys.executable,
        "-m",
        "gitops_nodes",
        *args,
        "--project",
        project,
        "--state-dir",
        str(state.path.parent),
    ]


def run(project: str, state: StateDir, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(project, state, *args), capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def balancer(state: StateDir, project: str) -> Iterator[Callable[[], tuple[int, int]]]:
    """Start `gitops-nodes serve` for the project: (data port, admin port). Stopped after."""
    processes: list[subprocess.Popen[str]] = []

    def start() -> tuple[int, int]:
        port, admin = free_port(), free_port()
        argv = cli(project, state, "serve", "--port", str(port), "--admin-port", str(admin))
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        processes.append(process)
        wait_until_serving(
            state, process, lambda: process.stdout.read() if process.stdout else "", DEADLINE
        )
        return port, admin

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=20)
        if process.stdout is not None:
            process.stdout.close()


def poll(condition: Callable[[], Any], what: str, within: float = DEADLINE) -> Any:
    return waiting.wait_until(condition, what, within, every=0.1)


# --- telemetry --------------------------------------------------------------------------


def test_a_telemetry_port_is_published_and_scraped_through_the_balancer(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    balancer: Callable[[], tuple[int, int]],
) -> None:
    telemetry = "  telemetry: {path: /metrics, port: 9100}\n"
    root = app_repo(
        node_spec("iris", 2, ', TELEMETRY_PORT: "9100"', telemetry)
        + alias_yaml("front", {"iris": 1})
    )
    applied = apply(root, runtime, project, state)
    assert applied.report is not None and applied.report.ok

    instances = sorted(runtime.list_instances(project), key=lambda i: i.index)
    assert len(instances) == 2
    for instance in instances:
        assert instance.telemetry_port and instance.telemetry_port != instance.port
        inspected = runtime.inspect_instance(project, instance.name)
        assert inspected is not None and inspected.telemetry_port == instance.telemetry_port
        assert b"app_info" in get(instance.telemetry_port, "/metrics")  # on 127.0.0.1
    entry = table(state).nodes["iris"]
    assert entry.telemetry_path == "/metrics"
    assert {(e.instance, e.port, e.telemetry_port) for e in entry.endpoints} == {
        (i.name, i.port, i.telemetry_port) for i in instances
    }
    live = workflow.observe(runtime, project, state)
    assert make_plan(project, load_spec(root), live).empty  # the ports read back as published

    port, admin = balancer()
    for _ in range(5):
        get(port, "/aliases/front/predict")

    def scraped() -> dict[str, promtext.Family] | None:
        families = promtext.read(get(admin, "/-/metrics").decode())
        requests = families.get("app_requests_total")
        if requests is None:
            return None
        total = sum(v for _, labels, v in requests.samples if labels["path"] == "/predict")
        return families if total == 5 else None

    families = poll(scraped, "the instances' counts of /predict to add up to 5")
    requests = families["app_requests_total"]
    assert {labels["instance_id"] for _, labels, _ in requests.samples} <= {
        i.name for i in instances
    }
    assert all(labels["node_id"] == "iris" for _, labels, _ in requests.samples)
    for instance in instances:
        labels = {"node_id": "iris", "instance_id": instance.name}
        assert families["node_telemetry_up"].value("node_telemetry_up", **labels) == 1
        assert families["app_info"].value("app_info", **labels, version="1") == 1
    assert families["node_requests_total"].value("node_requests_total", node_id="iris") == 5
    assert families["alias_requests_total"].value("alias_requests_total", alias_name="front") == 5


def test_a_stopped_instance_shows_as_down_and_the_rest_is_served(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    balancer: Callable[[], tuple[int, int]],
    docker_client: Any,
) -> None:
    telemetry = "  telemetry: {path: /metrics, port: 9100}\n"
    root = app_repo(node_spec("iris", 2, ', TELEMETRY_PORT: "9100"', telemetry))
    applied = apply(root, runtime, project, state)
    assert applied.report is not None and applied.report.ok
    instances = sorted(runtime.list_instances(project), key=lambda i: i.index)
    _, admin = balancer()
    docker_client.api.stop(instances[1].name, timeout=1)  # out of the routing table's knowledge

    families = promtext.read(get(admin, "/-/metrics").decode())

    up = {labels["instance_id"]: v for _, labels, v in families["node_telemetry_up"].samples}
    assert up == {instances[0].name: 1.0, instances[1].name: 0.0}
    assert "app_info" in families


# --- logs ----------------------------------------------------------------------------------


def test_logs_shows_every_instance_prefixed_and_in_time_order(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_spec("web", 2, ', LOG: "1"'))
    applied = apply(root, runtime, project, state)
    assert applied.report is not None and applied.report.ok
    by_index = {i.index: i for i in runtime.list_instances(project)}
    get(by_index[1].port or 0, "/first")  # instance 1 before instance 0: time order shows
    get(by_index[0].port or 0, "/second")

    def both_logged() -> list[str] | None:
        done = run(project, state, "logs", "web")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        return lines if "web/0 | 1 GET /second" in lines else None

    lines = poll(both_logged, "the second request in the logs")
    assert "web/0 | 1 serving on 8080" in lines and "web/1 | 1 serving on 8080" in lines
    assert lines.index("web/1 | 1 GET /first") < lines.index("web/0 | 1 GET /second")
    assert all(line.startswith(("web/0 | ", "web/1 | ")) for line in lines)

    only = run(project, state, "logs", "web", "--instance", "1", "--tail", "1", "-t")
    assert only.returncode == 0, only.stderr
    [line] = only.stdout.splitlines()
    prefix, stamp, text = line.split(" ", 2)[0], line.split(" ")[2], line.split(" ", 3)[3]
    assert prefix == "web/1" and stamp.endswith("Z") and text == "1 GET /first"


def test_logs_leave_the_balancers_health_checks_out_unless_asked(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    balancer: Callable[[], tuple[int, int]],
) -> None:
    root = app_repo(node_spec("web", 1, ', LOG: "all"'))
    applied = apply(root, runtime, project, state)
    assert applied.report is not None and applied.report.ok
    balancer()  # its health checker sends GET /healthz every 2 s
    (instance,) = runtime.list_instances(project)
    get(instance.port or 0, "/own")

    def checked() -> list[str] | None:
        done = run(project, state, "logs", "web", "--health")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        agents = [line for line in lines if "GET /healthz 200 gitops-nodes-balancer" in line]
        return lines if agents and "web/0 | 1 GET /own" in lines else None

    with_health = poll(checked, "a health check from the balancer in the instance's output")
    shown = run(project, state, "logs", "web")
    assert shown.returncode == 0, shown.stderr
    assert "web/0 | 1 GET /own" in shown.stdout.splitlines()
    assert "/healthz" not in shown.stdout
    assert len(with_health) > len(shown.stdout.splitlines())


def test_logs_of_an_unknown_node_or_instance_is_an_error(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir, docker_client: Any
) -> None:
    root = app_repo(node_spec("web", 1))
    applied = apply(root, runtime, project, state)
    assert applied.report is not None and applied.report.ok

    unknown = run(project, state, "logs", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr == f"error: project {project} has no node 'nope'; its nodes: web\n"
    missing = run(project, state, "logs", "web", "--instance", "3")
    assert missing.returncode == 1
    assert missing.stderr == "error: node web has no instance 3; its instances: 0\n"

    for instance in runtime.list_instances(project):  # gone by hand: still published
        docker_client.api.remove_container(instance.name, force=True)
    empty = run(project, state, "logs", "web")
    assert empty.returncode == 0 and empty.stdout == "Node web has no instances.\n"


def test_logs_follow_streams_a_line_written_after_it_started(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_spec("web", 2, ', LOG: "1"'))
    applied = apply(root, runtime, project, state)
    assert applied.report is not None and applied.report.ok
    by_index = {i.index: i for i in runtime.list_instances(project)}
    process = subprocess.Popen(
        cli(project, state, "logs", "web", "--follow"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for x in stdout:
            lines.put(x)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def saw(wanted: str) -> bool:
        deadline = time.monotonic() + DEADLINE
        while wanted not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                return False
            try:
                seen.append(lines.get(timeout=min(remaining, 0.5)).rstrip("\n"))
            except queue.Empty:
                continue
        return True

    try:
        # Both instances' backlog comes first: the follow is under way for each of them.
        assert saw("web/0 | 1 serving on 8080") and saw("web/1 | 1 serving on 8080"), seen
        token = secrets.token_hex(4)
        get(by_index[1].port or 0, f"/late-{token}")
        assert saw(f"web/1 | 1 GET /late-{token}"), seen
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert code == 0, process.stderr.read() if process.stderr else ""
    if process.stderr is not None:
        assert process.stderr.read() == ""
        process.stderr.close()
    process.stdout.close()
