"""The data plane's contract: a request's state, and the faces its parts show each other.

The parts meet only here, so each can be read (and imported) alone:

    client.py   ClientConnection: a Client; a Downstream to the instance side
    upstream.py UpstreamConnection: an Upstream (where a request's body goes)
    execute.py  ExecuteCall: an Upstream to the client, a Downstream to the instance side
    proxy.py    Proxy: what every connection of a process shares (a Shared); it sweeps the
                open connections through their Swept faces

    client ──Upstream──▶ upstream | execute ──Downstream──▶ client
    execute ──Client──▶ client (answers, picks, sends on its behalf)

Nothing here does I/O; the classes implementing these live in the modules named above.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from balancer.backends import Backend
from balancer.forwarding import Hop
from balancer.head import Head
from balancer.routing import AliasRoute, NodeRoute
from balancer.settings import ProxySettings


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


class Shared(Protocol):
    """What a connection reads of its process's shared state (balancer.proxy.Proxy)."""

    loop: asyncio.AbstractEventLoop
    settings: ProxySettings


class Client(Downstream, Protocol):
    """A client's connection as the execute API uses it: it answers the client, and picks and
    reaches instances on the call's behalf."""

    hop: Hop  # the peer's address, and whether it is a trusted proxy

    @property
    def proxy(self) -> Shared: ...

    def answer(
        self,
        request: Request,
        code: int,
        message: str,
        close: bool = False,
        extra: dict[str, str] | None = None,
        head: bytes = b"",
    ) -> None: ...
    def finish_local(self, request: Request) -> None: ...
    def pick(self, request: Request, exclude: Backend | None = None) -> Backend | None: ...


class SweptClient(Protocol):
    """A client connection as the once-a-second sweep sees it (idle timeout, shutdown)."""

    active: Request | None
    last_active: float

    def close(self) -> None: ...


class SweptUpstream(Protocol):
    """An instance connection as the once-a-second sweep sees it (its deadlines)."""

    def check_deadline(self, now: float, settings: ProxySettings) -> None: ...


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
        "rewrite",
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
        # (prefix, host) when the response's Location and cookie paths are put under the
        # prefix the request came through (a node's or alias's prefixRewrite); else None.
        self.rewrite: tuple[bytes, bytes] | None = None


def client_of(request: Request) -> Downstream | None:
    client = request.client
    return None if client is None or client.closed else client
