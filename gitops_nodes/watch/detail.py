"""A node's detail for the web console: its spec as applied and its recent log lines.

The spec is the one the watch loop last applied (the last good revision), projected to what
an operator needs to read: environment variables by name only (their values may be secrets),
access rules by key name only (the spec holds digests, never keys). The log lines come from
the same place as `gitops-nodes logs` (gitops_nodes/nodelogs.py).
"""

from __future__ import annotations

from typing import Any

from gitops_nodes import nodelogs
from gitops_nodes.errors import GitopsNodesError
from gitops_nodes.spec.state import DesiredNode
from gitops_nodes.watch.reconcile import Reconciler

LOG_LINES = 50  # per instance


def spec_view(node: DesiredNode) -> dict[str, Any]:
    """What the page shows of a node's spec: no environment value, no key."""
    config = node.config
    health = node.health
    return {
        "file": node.source.file,
        "document": node.source.document,
        "image": config.image,
        "port": config.port,
        "command": list(config.command) if config.command is not None else None,
        "env": sorted(name for name, _ in config.env),  # names only
        "cpus": config.cpus,
        "memory": config.memory,
        "instances": node.instances,
        "minHealthy": node.min_healthy,
        "maintenanceLimit": node.maintenance_limit,
        "suspended": node.suspended,
        "timeouts": {"request": node.timeouts.request, "idle": node.timeouts.idle},
        "healthCheck": {
            "path": health.path,
            "port": health.port,
            "interval": health.interval,
            "timeout": health.timeout,
            "healthyThreshold": health.healthy_threshold,
            "unhealthyThreshold": health.unhealthy_threshold,
        },
        "telemetryPath": node.telemetry_path,
        "access": (
            {"keys": [k.name for k in node.access.keys], "folders": list(node.access.folders)}
            if node.access is not None
            else None
        ),
        "specHash": node.spec_hash,
    }


def describe_node(reconciler: Reconciler, name: str) -> dict[str, Any]:
    """The node's applied spec (None when the last good revision has no such node) and its
    instances' last LOG_LINES lines each, or why they could not be read. Blocking."""
    desired = reconciler.applied_state
    node = desired.nodes.get(name) if desired is not None else None
    detail: dict[str, Any] = {
        "spec": spec_view(node) if node is not None else None,
        "logs": None,
        "logsError": None,
    }
    try:
        runtime = reconciler.runtime if reconciler.runtime is not None else reconciler.connect()
        chosen = nodelogs.sources(runtime, reconciler.project, reconciler.state, name)
        detail["logs"] = nodelogs.recent(runtime, chosen, LOG_LINES)
    except GitopsNodesError as exc:
        detail["logsError"] = str(exc)
    return detail
