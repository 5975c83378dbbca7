"""Small helpers the integration tests share: specs of the test service, and reading back."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from balancer.table import RoutingTable, read_table
from gitops_nodes import workflow
from gitops_nodes.apply import ApplyOptions, StepResult
from gitops_nodes.health import probe
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.spec.load import load_spec
from gitops_nodes.statedir import StateDir


def node_yaml(
    name: str, version: str, instances: int = 1, min_healthy: int = 1, extra_env: str = ""
) -> str:
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
---
"""


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
