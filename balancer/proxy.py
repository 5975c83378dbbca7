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

This module holds what every connection of a process shares (Proxy) and a request's state
(Request); client.py and upstream.py hold the two Protocols, http.py the pure HTTP pieces,
execute.py the execute API (which stands between the two Protocols for its calls).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from balancer.backends import Backend
from balancer.head import Head
from balancer.http import MAX_BODY, MAX_CLIENTS, MAX_HEAD, MAX_HEADERS
from balancer.routing import Affinity, AliasRoute, NodeRoute, Router

if TYPE_CHECKING:
    from balancer.client import ClientConnection
    from balancer.upstream import UpstreamConnection

log = logging.getLogger("gitops_nodes.balancer")


@dataclass(frozen=True)
class ProxySettings:
    """Limits and timeouts of the data plane (seconds, bytes).

    The client limits bound what one connection can make the balancer hold: a request head
    (request line and header lines) of at most max_head bytes and max_headers lines (431, or
    414 when the request line alone is longer), sent within header_timeout (408); a
    kept-alive connection idle for idle_timeout closes; past max_clients open connections,
    a new one is answered 503 and closed.
    """

    max_body: int = MAX_BODY
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # silence from an instance: before the head, between reads
    idle_timeout: float = 60.0  # kept-alive client connections (instances: each node's own)
    access_log: bool = False
    max_head: int = MAX_HEAD
    max_headers: int = MAX_HEADERS
    header_timeout: float = 10.0  # from a head's first byte to its last (and connect to first)
    max_clients: int = MAX_CLIENTS  # open client connections, per worker process

    def limits(self) -> dict[str, float | int]:
        """The client limits, as `/-/status` shows them."""
        return {
            "maxHeadBytes": self.max_head,
            "maxHeaders": self.max_headers,
            "maxBodyBytes": self.max_body,
            "headerTimeoutSeconds": self.header_timeout,
            "idleTimeoutSeconds": self.idle_timeout,
            "maxClients": self.max_clients,
        }


class Observer(Protocol):
    """Where each finished request is counted (balancer.metrics.Metrics)."""

    def observe(self, alias: str | None, node: str | None, code: int, seconds: float) -> None: ...


class Upstream(Protocol):
    """Where a routed request's body goes: its UpstreamConnection, or the ExecuteCall that
    reads an execute call's body whole before it picks an instance (balancer/execute.py)."""

    sending: Request | None
    response_started: bool

    def write(self, data: bytes) -> None: ...
    def request_sent(self) -> None: ...
    def abort_exchange(self, client_gone: bool) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Downstream(Protocol):
    """Who an UpstreamConnection answers: the ClientConnection, or the ExecuteCall that turns
    an instance's answer into the execute API's before the client sees it."""

    transport: Any

    @property
    def closed(self) -> bool: ...

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def send_to(self, request: Request, backend: Backend) -> None: ...
    def retry_elsewhere(self, request: Request, failed: Backend) -> bool: ...
    def respond_failure(self, request: Request, code: int, message: str) -> None: ...
    def done(self, request: Request, code: int, node: str | None) -> None: ...
    def close(self) -> None: ...


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
        self.clients: set[ClientConnection] = set()
        self.upstreams: set[UpstreamConnection] = set()
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
            client.check_deadline(now, settings)

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


class Request:
    """One request on a client connection, from its head to the end of its response."""

    __slots__ = (
        "affinity_key",
        "alias",
        "backend",
        "caller",
        "chunked",
        "client",
        "complete",
        "expect_continue",
        "folder_id",
        "head",
        "held",
        "held_size",
        "keep_alive",
        "local",
        "method",
        "node",
        "parsed",
        "received",
        "request_id",
        "retried",
        "started",
        "target",
        "upstream",
        "version",
    )

    def __init__(self, method: bytes, target: bytes, version: str, started: float) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.started = started
        self.keep_alive = True
        self.complete = False
        self.chunked = False
        self.expect_continue = False
        self.received = 0
        self.head = b""
        self.held: list[bytes] = []  # body bytes waiting for an upstream connection
        self.held_size = 0
        self.local: bytes | None = None  # a response the balancer answers itself
        self.alias: AliasRoute | None = None
        self.node: NodeRoute | None = None
        self.parsed: Head | None = None  # its head, when the parser read it
        self.backend: Backend | None = None
        self.upstream: Upstream | None = None
        self.request_id = b""
        self.affinity_key: bytes | None = None
        self.retried = False
        self.client: Downstream | None = None
        self.folder_id: str | None = None  # from x-folder-id (or an execute call's body)
        self.caller: str | None = None  # a private target's admitted caller, by name


def client_of(request: Request) -> Downstream | None:
    client = request.client
    return None if client is None or client.closed else client
