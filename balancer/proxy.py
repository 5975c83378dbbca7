"""The data plane: asyncio Protocols with httptools on both sides, no ASGI on the hot path.

A client connection parses requests with httptools, picks an instance from the Router it read
once at the request's start, and forwards over a kept-alive upstream connection from that
instance's pool, writing each upstream read straight back to the client. There is no task,
no future and no timer per request when a pooled connection is at hand: timeouts are enforced
by one sweep a second over the open connections (`Proxy.sweep`): each node's request and idle
timeouts (from the routing table, copied onto its Backends at each swap) and the balancer's
own read and client idle timeouts.

Request flow, one exchange at a time per client connection (pipelined requests queue):
  on_headers_complete -> route -> pick a Backend -> pooled or new UpstreamConnection
  on_body             -> forwarded (re-framed when chunked), or held until connected
  upstream response   -> head rebuilt without hop-by-hop headers, body streamed back
  on_message_complete -> upstream back to its pool, client ready for the next request

This module holds what every connection of a process shares (Proxy); types.py a request's
state (Request) and the faces the parts show each other; client.py and upstream.py hold the
two Protocols, http.py the pure HTTP pieces, forwarding.py the head sent to an instance,
execute.py the execute API (which stands between the two Protocols for its calls).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from balancer.backends import Backend
from balancer.routing import Affinity, Router
from balancer.settings import ProxySettings
from balancer.types import (
    Downstream,
    Observer,
    Request,
    SweptClient,
    SweptUpstream,
    Upstream,
    client_of,
)

# Re-exported: the data plane's settings and request state are imported from here too.
__all__ = [
    "Downstream",
    "Observer",
    "Proxy",
    "ProxySettings",
    "Request",
    "Upstream",
    "client_of",
]

log = logging.getLogger("gitops_nodes.balancer")


class Proxy:
    """What all connections of one balancer process share. `router` is swapped whole."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        router: Router,
        affinity: Affinity,
        metrics: Observer,
        settings: ProxySettings | None = None,
    ) -> None:
        self.loop = loop
        self.router = router
        self.affinity = affinity
        self.metrics = metrics
        self.settings = settings or ProxySettings()
        self.clients: set[SweptClient] = set()
        self.upstreams: set[SweptUpstream] = set()
        self.id_prefix = os.urandom(4).hex().encode() + b"-"
        self.counter = 0
        self.on_drained: Any = None  # called with a removed Backend once its last request ends

    def request_id(self) -> bytes:
        self.counter += 1
        return self.id_prefix + b"%x" % self.counter

    def sweep(self) -> None:
        """Enforce every timeout; called about once a second by the server."""
        now = self.loop.time()
        settings = self.settings
        for upstream in list(self.upstreams):
            upstream.check_deadline(now, settings)
        for client in list(self.clients):
            if client.active is None and now - client.last_active > settings.idle_timeout:
                client.close()

    def close_idle_clients(self) -> None:
        """Close keep-alive connections with nothing in flight (graceful shutdown)."""
        for client in list(self.clients):
            if client.active is None:
                client.close()

    def release(self, backend: Backend) -> None:
        """One request less in flight on backend; a removed one is drained at zero."""
        backend.inflight -= 1
        if backend.removed and backend.inflight == 0 and self.on_drained is not None:
            self.on_drained(backend)

    def inflight(self) -> int:
        return sum(1 for client in self.clients if client.active is not None)
