"""Per-instance state that outlives routing tables: health, in-flight count, idle connections.

A Backend is keyed by its instance's identity (name, host, port), not by a table, so swapping
tables never resets health (the lesson of Traefik 6706): a new table reuses the Backends of
instances it keeps, adds Backends for new instances (no traffic before their first passing
check), and marks the ones it drops as removed, to be drained and closed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from balancer.table import (
    DEFAULT_TIMEOUTS,
    Endpoint,
    HealthSettings,
    NodeEntry,
    RoutingTable,
    Timeouts,
)

BackendKey = tuple[str, str, int]


class Backend:
    """One instance as the balancer knows it. Statuses use DESIGN.md's names."""

    __slots__ = (
        "checked_at",
        "fails",
        "healthy",
        "host",
        "idle",
        "idle_timeout",
        "inflight",
        "instance",
        "key",
        "last_error",
        "node",
        "passes",
        "port",
        "removed",
        "request_timeout",
        "settings",
        "socket",
        "status",
        "unhealthy_since",
    )

    def __init__(
        self,
        node: str,
        endpoint: Endpoint,
        settings: HealthSettings,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        self.key: BackendKey = (endpoint.instance, endpoint.host, endpoint.port)
        self.node = node
        self.instance = endpoint.instance
        self.host = endpoint.host
        self.port = endpoint.port
        self.socket = endpoint.socket  # requests go there when set; see UpstreamConnection
        self.settings = settings
        # The node's, copied here on each table swap: the sweep reads them per connection.
        self.request_timeout = timeouts.request
        self.idle_timeout = timeouts.idle
        self.healthy = False  # no traffic before the first check passes (Traefik 4544)
        self.status = "Started"
        self.inflight = 0
        self.idle: list[Any] = []  # kept-alive upstream connections, most recent last
        self.removed = False
        self.passes = 0
        self.fails = 0
        self.last_error = ""
        self.checked_at = 0.0
        self.unhealthy_since: float | None = None  # time.monotonic() it turned Unhealthy

    def mark_healthy(self) -> None:
        self.healthy = True
        self.status = "Healthy"
        self.last_error = ""
        self.unhealthy_since = None

    def mark_unhealthy(self, reason: str) -> None:
        self.healthy = False
        if self.status != "Unhealthy":
            self.unhealthy_since = time.monotonic()
        self.status = "Unhealthy"
        self.last_error = reason

    def failing_for(self, now: float) -> float:
        """Seconds it has been Unhealthy with its checks failing still (0: it is not);
        now is time.monotonic(). An instance ejected for a refused connection whose checks
        pass again is not failing."""
        since = self.unhealthy_since
        if since is None or self.fails == 0 or self.status != "Unhealthy":
            return 0.0
        return now - since

    def eject(self, reason: str) -> None:
        """Take it out of balancing at once (a refused or reset connection); checks readmit it."""
        self.passes = 0
        self.close_idle()
        self.mark_unhealthy(reason)

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for connection in idle:
            connection.close()

    def __repr__(self) -> str:
        return f"<Backend {self.node}/{self.instance} {self.host}:{self.port} {self.status}>"


class Backends:
    """Every Backend the balancer has, reconciled against each new routing table."""

    def __init__(self) -> None:
        self.by_key: dict[BackendKey, Backend] = {}

    def reconcile(self, table: RoutingTable) -> tuple[list[Backend], list[Backend]]:
        """Bring the registry in line with table; returns (added, removed) Backends."""
        wanted: dict[BackendKey, tuple[str, Endpoint, NodeEntry]] = {}
        for node, entry in table.nodes.items():
            for endpoint in entry.endpoints:
                key = (endpoint.instance, endpoint.host, endpoint.port)
                wanted[key] = (node, endpoint, entry)
        added: list[Backend] = []
        for key, (node, endpoint, entry) in wanted.items():
            backend = self.by_key.get(key)
            if backend is None or backend.removed:
                backend = Backend(node, endpoint, entry.health, entry.timeouts)
                self.by_key[key] = backend
                added.append(backend)
            else:
                backend.node = node
                backend.socket = endpoint.socket
                backend.settings = entry.health
                backend.request_timeout = entry.timeouts.request
                backend.idle_timeout = entry.timeouts.idle
        removed = [b for key, b in self.by_key.items() if key not in wanted and not b.removed]
        for backend in removed:
            backend.removed = True
            backend.status = "Deleting"
            backend.healthy = False
            backend.close_idle()
        return added, removed

    def forget(self, backends: Iterable[Backend]) -> None:
        """Drop removed Backends whose last request has finished."""
        for backend in backends:
            if self.by_key.get(backend.key) is backend:
                del self.by_key[backend.key]

    def draining(self) -> list[Backend]:
        return [b for b in self.by_key.values() if b.removed]
