"""One health probe of one instance over loopback, and the status names it leads to."""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass

from balancer.table import HealthSettings
from gitops_nodes.live import LiveInstance
from gitops_nodes.spec.state import settings_from

__all__ = ["LOOPBACK", "Probe", "instance_status", "node_status", "probe", "settings_from"]

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Probe:
    """What one check found: whether the port answered, and whether the check passed."""

    connected: bool
    healthy: bool
    detail: str


def probe(port: int, health: HealthSettings) -> Probe:
    """Check once: GET the path (2xx or 3xx passes) or, without a path, connect over TCP."""
    if health.path is None:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=health.timeout):
                return Probe(True, True, "accepts connections")
        except OSError as exc:
            return Probe(False, False, f"connect failed: {exc.strerror or exc}")
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=health.timeout)
    try:
        connection.request("GET", health.path, headers={"user-agent": "gitops-nodes-health"})
        response = connection.getresponse()
        response.read()
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        connected = not isinstance(exc, ConnectionRefusedError)
        return Probe(connected, False, f"GET {health.path} failed: {exc}")
    finally:
        connection.close()
    passed = 200 <= response.status < 400
    return Probe(True, passed, f"GET {health.path} answered {response.status}")


def instance_status(
    instance: LiveInstance, found: Probe | None, now: float, health: HealthSettings
) -> str:
    """The instance status of DESIGN.md from the engine's state and one probe."""
    if instance.state == "removing":
        return "Deleting"
    if instance.state == "created":
        return "Created"
    if instance.state == "restarting":
        return "Started"
    if instance.state == "starting":  # a Swarm task: running, its own check not passed yet
        return "Preparing" if _young(instance, now, health) else "Unhealthy"
    if instance.state != "running" or found is None:
        return "Unhealthy"
    if found.healthy:
        return "Healthy"
    if not _young(instance, now, health):
        return "Unhealthy"
    return "Preparing" if found.connected else "Started"


def _young(instance: LiveInstance, now: float, health: HealthSettings) -> bool:
    """Whether the instance started less than its start timeout ago."""
    return instance.started_at is not None and now - instance.started_at < health.start_timeout


def node_status(instance_statuses: list[str], min_healthy: int) -> str:
    """A node's status from its instances' statuses and its minimum."""
    if instance_statuses and all(s == "Deleting" for s in instance_statuses):
        return "Deleting"
    healthy = sum(1 for s in instance_statuses if s == "Healthy")
    if healthy >= min_healthy and healthy > 0:
        return "Healthy"
    if instance_statuses and all(
        s in ("Created", "Started", "Preparing") for s in instance_statuses
    ):
        return "Created"
    return "Unhealthy"
