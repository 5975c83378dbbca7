"""The data plane: asyncio Protocols with httptools on both sides, no ASGI on the hot path.

A client connection parses requests with httptools, picks an instance from the Router it read
once at the request's start, and forwards over a kept-alive upstream connection from that
instance's pool, writing each upstream read straight back to the client. There is no task,
no future and no timer per request when a pooled connection is at hand: timeouts are enforced
by one sweep a second over the open connections (`Proxy.sweep`).

Request flow, one exchange at a time per client connection (pipelined requests queue):
  on_headers_complete -> route -> pick a Backend -> pooled or new UpstreamConnection
  on_body             -> forwarded (re-framed when chunked), or held until connected
  upstream response   -> head rebuilt without hop-by-hop headers, body streamed back
  on_message_complete -> upstream back to its pool, client ready for the next request
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import httptools

from balancer.backends import Backend
from balancer.routing import Affinity, AliasRoute, NodeRoute, Router

log = logging.getLogger("gitops_nodes.balancer")
access_log = logging.getLogger("gitops_nodes.balancer.access")

MAX_BODY = 16 * 2**20
HOLD_LIMIT = 256 * 1024  # body bytes held while connecting before the client is paused
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Set by the balancer itself: dropped from the client's request and written afresh.
REWRITTEN = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id", b"expect", b"content-length"}
)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    413: b"Payload Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True)
class ProxySettings:
    """Limits and timeouts of the data plane (seconds, bytes)."""

    max_body: int = MAX_BODY
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # for the response head, and between reads of its body
    idle_timeout: float = 60.0  # kept-alive connections, to clients and to instances
    access_log: bool = False


class Observer(Protocol):
    """Where each finished request is counted (balancer.metrics.Metrics)."""

    def observe(self, alias: str | None, node: str | None, code: int, seconds: float) -> None: ...


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


class Request:
    """One request on a client connection, from its head to the end of its response."""

    __slots__ = (
        "affinity_key",
        "alias",
        "backend",
        "chunked",
        "client",
        "complete",
        "expect_continue",
        "head",
        "held",
        "held_size",
        "keep_alive",
        "local",
        "method",
        "node",
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
        self.backend: Backend | None = None
        self.upstream: UpstreamConnection | None = None
        self.request_id = b""
        self.affinity_key: bytes | None = None
        self.retried = False
        self.client: ClientConnection | None = None


def error_body(code: int, message: str, request_id: bytes, **extra: str) -> bytes:
    payload = {"error": message, "status": code, "requestId": request_id.decode(), **extra}
    return json.dumps(payload).encode()


def local_response(code: int, body: bytes, request_id: bytes, close: bool) -> bytes:
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"x-request-id: %s\r\n" % (code, REASONS.get(code, b"Error"), len(body), request_id)
    )
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


class ClientConnection(asyncio.Protocol):
    """One client's connection: parses its requests and proxies them one at a time."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.parsing: Request | None = None  # whose body the parser is reading
        # A request whose head arrived in this read: started once the read is parsed, so its
        # head and whatever body came with it go upstream in one write.
        self.starting: Request | None = None
        self.active: Request | None = None  # whose response is being written
        self.queue: deque[Request] = deque()
        self.last_active = proxy.loop.time()
        self.closed = False
        self.paused = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = (peer[0] if peer else "unknown").encode()
        self.proxy.clients.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.proxy.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.refuse(501, "protocol upgrades (WebSocket) are not supported")
        except httptools.HttpParserError as exc:
            if self.parsing is not None and self.parsing.local is not None:
                return  # already answering this request (e.g. 413) and closing
            self.refuse(400, f"malformed request: {exc}")
        else:
            request = self.starting
            if request is not None:
                self.starting = None
                self.start(request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.clients.discard(self)
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.abort_exchange(client_gone=True)
        self.queue.clear()

    def pause_writing(self) -> None:
        # The client reads slower than the instance writes: stop reading the instance.
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.pause_reading()

    def resume_writing(self) -> None:
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.resume_reading()

    # -- httptools callbacks --------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        proxy = self.proxy
        parser = self.parser
        request = Request(
            parser.get_method(), self.url, parser.get_http_version(), proxy.loop.time()
        )
        request.keep_alive = parser.should_keep_alive()
        request.client = self
        self.parsing = request
        self.prepare(request)
        self.url = b""  # ready for the next message (cheaper than an on_message_begin)
        self.headers = []
        if self.active is None and self.starting is None:
            self.starting = request
        else:
            self.queue.append(request)  # pipelined: answered in order
            self.pause()

    def on_body(self, body: bytes) -> None:
        request = self.parsing
        if request is None or request.local is not None:
            return
        request.received += len(body)
        if request.received > self.proxy.settings.max_body:
            self.body_too_large(request)
            return
        if request.chunked:
            body = b"%x\r\n%s\r\n" % (len(body), body)
        upstream = request.upstream
        if upstream is not None and upstream.sending is request:
            upstream.write(body)
        else:
            request.held.append(body)
            request.held_size += len(body)
            if request.held_size > HOLD_LIMIT:
                self.pause()

    def on_message_complete(self) -> None:
        request = self.parsing
        if request is None:
            return
        # should_keep_alive() is only right inside this callback (it reads False afterwards).
        request.keep_alive = request.keep_alive and self.parser.should_keep_alive()
        request.complete = True
        self.parsing = None
        if request.local is not None:
            if request is self.active:
                self.finish_local(request)
            return
        tail = b"0\r\n\r\n" if request.chunked else b""
        upstream = request.upstream
        if upstream is not None and upstream.sending is request:
            if tail:
                upstream.write(tail)
            upstream.request_sent()
        elif tail:
            request.held.append(tail)

    # -- routing --------------------------------------------------------------------------

    def prepare(self, request: Request) -> None:
        """Read the head once: route it, check its size, and build the upstream head."""
        proxy = self.proxy
        router = proxy.router  # one snapshot for the whole request, retries included
        alias_name = node_name = None
        content_length = -1
        forwarded_for = b""
        forwarded_proto = b""
        request_id = b""
        kept: list[bytes] = []
        connection = b""
        affinity_header: bytes | None = None
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"x-node-alias":
                alias_name = value.decode("latin-1")
            elif lower == b"x-node-id":
                node_name = value.decode("latin-1")
            elif lower == b"content-length":
                content_length = int(value) if value.isdigit() else -2
            elif lower == b"transfer-encoding":
                request.chunked = b"chunked" in value.lower()
            elif lower == b"x-forwarded-for":
                forwarded_for = value
            elif lower == b"x-forwarded-proto":
                forwarded_proto = value
            elif lower == b"x-request-id":
                request_id = value
            elif lower == b"expect":
                request.expect_continue = value.lower() == b"100-continue"
            elif lower == b"connection":
                connection = value
            if lower in HOP_BY_HOP or lower in REWRITTEN:
                continue
            kept.append(b"%s: %s\r\n" % (name, value))
        if connection:
            kept = without_connection_tokens(kept, connection)
        request.request_id = request_id or proxy.request_id()

        path = request.target
        if alias_name is None and node_name is None:
            path, alias_name, node_name = split_target(request.target)
        if content_length == -2:
            return self.answer(request, 400, "the content-length header is not a number")
        if content_length > proxy.settings.max_body:
            return self.answer(
                request,
                413,
                f"request body of {content_length} bytes is over the {proxy.settings.max_body}"
                " byte limit",
                close=True,
            )
        if alias_name is not None:
            if alias_name.startswith("datasphere.user."):
                alias_name = alias_name[len("datasphere.user.") :]
            alias = router.aliases.get(alias_name)
            if alias is None:
                return self.answer(
                    request, 404, f"no alias {alias_name!r}", extra={"alias": alias_name}
                )
            request.alias = alias
            affinity_header = alias.affinity_header
            if affinity_header is not None:
                request.affinity_key = next(
                    (v for n, v in self.headers if n.lower() == affinity_header), None
                )
        elif node_name is not None:
            node = router.nodes.get(node_name)
            if node is None:
                return self.answer(
                    request, 404, f"no node {node_name!r}", extra={"node": node_name}
                )
            request.node = node
        elif path == b"/-/healthz":
            request.local = local_response(200, b'{"status": "ok"}', request.request_id, False)
            return None
        else:
            return self.answer(
                request,
                404,
                "no alias or node in the request: use /aliases/<alias>/..., /nodes/<node>/..., "
                "or the header x-node-alias or x-node-id",
            )

        forwarded_for = forwarded_for + b", " + self.client_ip if forwarded_for else self.client_ip
        framing = b"transfer-encoding: chunked\r\n" if request.chunked else b""
        if content_length >= 0:
            framing = b"content-length: %d\r\n" % content_length
            request.chunked = False
        request.head = b"".join(
            [
                request.method,
                b" ",
                path,
                b" HTTP/1.1\r\n",
                *kept,
                framing,
                b"x-forwarded-for: ",
                forwarded_for,
                b"\r\n",
                b"x-forwarded-proto: ",
                forwarded_proto or b"http",
                b"\r\n",
                b"x-request-id: ",
                request.request_id,
                b"\r\n\r\n",
            ]
        )
        return None

    def answer(
        self,
        request: Request,
        code: int,
        message: str,
        close: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        body = error_body(
            code, message, request.request_id or self.proxy.request_id(), **(extra or {})
        )
        request.local = local_response(code, body, request.request_id, close)
        if close:
            request.keep_alive = False

    def pick(self, request: Request, exclude: Backend | None = None) -> Backend | None:
        alias = request.alias
        proxy = self.proxy
        if alias is not None:
            key = request.affinity_key
            if key is not None and exclude is None:
                sticky = proxy.affinity.lookup(alias.name, key, alias.by_key)
                if sticky is not None and not sticky.removed:
                    request.node = _node_of(alias, sticky)
                    return sticky
            node = alias.pick_node()
            if node is None:
                return None
            request.node = node
            backend = node.pick(exclude)
            if backend is not None and key is not None:
                proxy.affinity.remember(alias.name, key, backend)
            return backend
        node = request.node
        return node.pick(exclude) if node is not None else None

    # -- the exchange ---------------------------------------------------------------------

    def start(self, request: Request) -> None:
        self.active = request
        if request.local is not None:
            if request.complete or not request.keep_alive:
                self.finish_local(request)
            return  # answered once its body has been read (and discarded)
        if request.expect_continue and not request.complete:
            self.transport.write(CONTINUE)
        backend = self.pick(request)
        if backend is None:
            self.no_instance(request)
            return
        self.send_to(request, backend)

    def send_to(self, request: Request, backend: Backend) -> None:
        request.backend = backend
        backend.inflight += 1
        idle = backend.idle
        while idle:
            upstream = idle.pop()
            if not upstream.closed:
                upstream.begin(request, reused=True)
                return
        proxy = self.proxy
        upstream = UpstreamConnection(proxy, backend)
        request.upstream = upstream
        upstream.request = request
        proxy.loop.create_task(upstream.connect(request))

    def no_instance(self, request: Request) -> None:
        target = request.alias.name if request.alias else request.node.name if request.node else ""
        kind = "alias" if request.alias else "node"
        self.answer(request, 503, f"no Healthy instance serves {kind} {target!r}")
        self.finish_local(request)

    def retry_elsewhere(self, request: Request, failed: Backend, reason: str) -> bool:
        """Try one other instance after a connect failure; False when there is none."""
        self.proxy.release(failed)
        if request.retried or self.closed:
            return False
        request.retried = True
        backend = self.pick(request, exclude=failed)
        if backend is None:
            return False
        request.upstream = None
        self.send_to(request, backend)
        return True

    def respond_failure(self, request: Request, code: int, message: str) -> None:
        """The exchange failed before any of the response was written: answer it ourselves."""
        if self.active is not request or self.closed:
            return
        node = request.node.name if request.node else None
        self.answer(request, code, message, extra={"node": node} if node else None)
        if not request.complete:
            request.keep_alive = False
        self.finish_local(request)

    def finish_local(self, request: Request) -> None:
        if request.local is not None:
            self.transport.write(request.local)
        node = request.node.name if request.node else None
        self.done(request, self._status_of(request.local), node)

    def done(self, request: Request, code: int, node: str | None) -> None:
        proxy = self.proxy
        elapsed = proxy.loop.time() - request.started
        alias = request.alias.name if request.alias else None
        proxy.metrics.observe(alias, node, code, elapsed)
        if proxy.settings.access_log:
            access_log.info(
                json.dumps(
                    {
                        "client": self.client_ip.decode(),
                        "method": request.method.decode(),
                        "target": request.target.decode("latin-1"),
                        "alias": alias,
                        "node": node,
                        "instance": request.backend.instance if request.backend else None,
                        "status": code,
                        "seconds": round(elapsed, 6),
                        "requestId": request.request_id.decode("latin-1"),
                    }
                )
            )
        self.active = None
        self.last_active = request.started + elapsed
        if self.closed:
            return
        if not request.keep_alive or not request.complete:
            self.close()
            return
        if self.queue:
            self.start(self.queue.popleft())
        if self.paused and not self.queue:
            self.resume()

    def body_too_large(self, request: Request) -> None:
        limit = self.proxy.settings.max_body
        message = f"request body is over the {limit} byte limit"
        request.keep_alive = False
        upstream = request.upstream
        if upstream is not None and upstream.response_started:
            self.close()
            return
        if upstream is not None:
            upstream.abort_exchange(client_gone=False)
        if request.backend is not None and request.upstream is None:
            self.proxy.release(request.backend)
        request.held.clear()
        self.answer(request, 413, message, close=True)
        if request is self.active:
            self.finish_local(request)

    def refuse(self, code: int, message: str) -> None:
        body = error_body(code, message, self.proxy.request_id())
        if self.active is None and not self.closed:
            self.transport.write(local_response(code, body, b"-", close=True))
        self.close()

    @staticmethod
    def _status_of(local: bytes | None) -> int:
        return int(local[9:12]) if local else 0

    def pause(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.proxy.clients.discard(self)
            self.transport.close()


PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b""})
_HOP_NAMES = b"|".join(sorted(HOP_BY_HOP | {b"x-request-id"}))
HOP_SEARCH = re.compile(rb"\r\n(?:" + _HOP_NAMES + rb")[ \t]*:")
_HOP_LINES = re.compile(rb"\r\n(?:" + _HOP_NAMES + rb")[ \t]*:[^\r\n]*", re.IGNORECASE)
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*(?:\r|$)")
_CONNECTION_VALUE = re.compile(rb"\r\nconnection[ \t]*:([^\r\n]*)")


def strip_hop_by_hop(block: bytes, lower: bytes) -> bytes:
    """A response head block without its hop-by-hop header lines (and x-request-id, which
    the balancer sets), including the headers its Connection header names."""
    named = _CONNECTION_VALUE.search(lower)
    block = _HOP_LINES.sub(b"", block)
    if named is None:
        return block
    value = named.group(1).strip()
    if value in PLAIN_CONNECTION:  # "keep-alive", the usual case
        return block
    tokens = {t.strip() for t in value.split(b",")} - PLAIN_CONNECTION
    if not tokens:
        return block
    lines = block.split(b"\r\n")
    kept = [lines[0]] + [
        line for line in lines[1:] if line.split(b":", 1)[0].strip().lower() not in tokens
    ]
    return b"\r\n".join(kept)


def without_connection_tokens(lines: list[bytes], connection: bytes) -> list[bytes]:
    """Drop the header lines that the Connection header names: they are hop-by-hop too."""
    tokens = {token.strip().lower() for token in connection.split(b",")} - PLAIN_CONNECTION
    if not tokens:
        return lines
    return [line for line in lines if line.split(b":", 1)[0].strip().lower() not in tokens]


_TARGETS: dict[bytes, tuple[bytes, str | None, str | None]] = {}
_TARGETS_LIMIT = 4096


def split_target(target: bytes) -> tuple[bytes, str | None, str | None]:
    """(path to forward, alias, node) from /aliases/<alias>/<path> or /nodes/<node>/<path>.

    Clients call the same few URLs over and over, so answers are remembered (boundedly).
    """
    found = _TARGETS.get(target)
    if found is None:
        found = _split_target(target)
        if len(_TARGETS) >= _TARGETS_LIMIT:
            _TARGETS.clear()
        _TARGETS[target] = found
    return found


def _split_target(target: bytes) -> tuple[bytes, str | None, str | None]:
    if target.startswith(b"/aliases/"):
        rest = target[9:]
        kind = "alias"
    elif target.startswith(b"/nodes/"):
        rest = target[7:]
        kind = "node"
    else:
        return target, None, None
    cut = len(rest)
    for mark in (b"/", b"?"):
        position = rest.find(mark)
        if 0 <= position < cut:
            cut = position
    name = rest[:cut].decode("latin-1")
    path = rest[cut:]
    if not path.startswith(b"/"):
        path = b"/" + path
    return path, (name if kind == "alias" else None), (name if kind == "node" else None)


def _node_of(alias: AliasRoute, backend: Backend) -> NodeRoute | None:
    return next((n for n in alias.nodes if backend in n.backends), None)


class UpstreamConnection(asyncio.Protocol):
    """A kept-alive connection to one instance, carrying one exchange at a time."""

    def __init__(self, proxy: Proxy, backend: Backend) -> None:
        self.proxy = proxy
        self.backend = backend
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.request: Request | None = None
        self.sending: Request | None = None  # the request whose body goes out here
        self.response_started = False
        self.informational = False
        self.reused = False
        self.closed = False
        self.paused = False
        self.raw = b""  # the response's bytes until its head is complete
        self.code = 0
        self.chunk_out = False
        self.until_close = False
        self.out: list[bytes] = []  # response bytes for the client, written once per read
        self.deadline_from = 0.0
        self.idle_since = 0.0

    async def connect(self, request: Request) -> None:
        """Open the connection for request, retrying once elsewhere when it fails."""
        proxy = self.proxy
        backend = self.backend
        try:
            await asyncio.wait_for(
                proxy.loop.create_connection(lambda: self, backend.host, backend.port),
                proxy.settings.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            reason = f"connect to {backend.host}:{backend.port} failed: {exc or 'timed out'}"
            backend.eject(reason)
            client_request = self.request
            self.request = None
            if client_request is None or client_request.upstream is not self:
                return
            client = _client_of(proxy, client_request)
            if client is None:
                proxy.release(backend)
                return
            if not client.retry_elsewhere(client_request, backend, reason):
                client.respond_failure(client_request, 502, f"{backend.node}: {reason}")
            return
        if self.request is not request or request.upstream is not self:
            self.close()  # the client left while we were connecting
            return
        self.begin(request, reused=False)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.closed:  # its exchange was dropped while connecting
            transport.close()
            return
        self.proxy.upstreams.add(self)

    def begin(self, request: Request, reused: bool) -> None:
        """Send request's head and whatever of its body has arrived."""
        self.request = request
        self.sending = request
        request.upstream = self
        self.reused = reused
        self.response_started = False
        self.raw = b""
        self.deadline_from = now = self.proxy.loop.time()
        held = request.held
        if held:
            self.transport.write(request.head + b"".join(held))
            request.held = []
            request.held_size = 0
            client = _client_of(self.proxy, request)
            if client is not None:
                client.resume()
        else:
            self.transport.write(request.head)
        if request.complete:
            self.sending = None  # request_sent(), inlined: this is the common case
            self.deadline_from = now

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def request_sent(self) -> None:
        self.sending = None
        self.deadline_from = self.proxy.loop.time()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.deadline_from = self.proxy.loop.time()
        if not self.response_started:
            if not self.raw and self.request is not None and self.whole_response(data):
                return
            self.raw = self.raw + data if self.raw else data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.out.clear()
            self.fail(f"malformed response from {self.backend.instance}: {exc}")
            return
        if self.out:
            self.flush()

    def flush(self) -> None:
        out = self.out
        request = self.request
        client = _client_of(self.proxy, request) if request is not None else None
        if client is not None:
            client.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.upstreams.discard(self)
        backend = self.backend
        if self in backend.idle:
            backend.idle.remove(self)
        request = self.request
        if request is None or request.upstream is not self:
            return
        if self.response_started and self.until_close:
            self.on_message_complete()  # the body ended with the connection, as announced
            return
        reason = f"{backend.instance} closed the connection" + (f": {exc}" if exc else "")
        self.fail(reason)

    def pause_writing(self) -> None:
        request = self.sending
        client = _client_of(self.proxy, request) if request else None
        if client is not None:
            client.pause()

    def resume_writing(self) -> None:
        request = self.sending
        client = _client_of(self.proxy, request) if request else None
        if client is not None:
            client.resume()

    # -- httptools callbacks (no per-header ones: the head is rewritten from its raw bytes) --

    def on_headers_complete(self) -> None:
        request = self.request
        code = self.parser.get_status_code()
        raw = self.raw
        end = raw.find(b"\r\n\r\n")
        block = raw[:end]  # the status line and the header lines, CRLF-separated
        self.raw = raw[end + 4 :]
        if end < 0:  # bare LF line ends, which the parser tolerates
            end = raw.find(b"\n\n")
            block = raw[:end].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            self.raw = raw[end + 2 :]
        if 100 <= code < 200:
            self.informational = True  # 100 Continue and hints: ours to absorb
            return
        self.raw = b""
        self.informational = False
        self.code = code
        self.response_started = True
        if request is None:
            return
        client = _client_of(self.proxy, request)
        if client is None:
            return
        lower = block.lower()
        has_length = b"\r\ncontent-length:" in lower
        chunked = b"\r\ntransfer-encoding:" in lower
        if HOP_SEARCH.search(lower) is not None:
            block = strip_hop_by_hop(block, lower)
        if not block.startswith(b"HTTP/1.1 "):
            block = b"HTTP/1.1" + block[block.find(b" ") :]
        lines = [block, b"\r\nx-request-id: %s\r\n" % request.request_id]
        no_body = request.method == b"HEAD" or code in (204, 304)
        self.chunk_out = False
        self.until_close = not no_body and not has_length and not chunked
        if not no_body and not has_length:
            if request.version == "1.1":
                self.chunk_out = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                request.keep_alive = False  # HTTP/1.0: the body ends when we close
        if not request.keep_alive:
            lines.append(b"connection: close\r\n")
        elif request.version == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self.out.append(b"".join(lines))
        if request.method == b"HEAD":
            # The parser cannot know this answers a HEAD and would wait for a body.
            keep = self.parser.should_keep_alive()
            self.parser = httptools.HttpResponseParser(self)
            self.complete(keep)

    def whole_response(self, data: bytes) -> bool:
        """The fast path for the usual answer: one read holding exactly one complete response
        with a content-length. It is written on as it came, with its head rewritten, without
        the parser (which never saw it, so it is ready for the next response as it is)."""
        request = self.request
        end = data.find(b"\r\n\r\n")
        if end < 0 or request is None or request.method == b"HEAD":
            return False
        block = data[:end]
        lower = block.lower()
        found = CONTENT_LENGTH.search(lower)
        if (
            found is None
            or end + 4 + int(found.group(1)) != len(data)
            or not block.startswith(b"HTTP/1.1 2")  # other codes take the parser's path
            or b"\r\ntransfer-encoding:" in lower
        ):
            return False
        keep = b"\r\nconnection: close" not in lower
        if HOP_SEARCH.search(lower) is not None:
            block = strip_hop_by_hop(block, lower)
        self.code = int(block[9:12])
        if request.keep_alive:
            tail = b"connection: keep-alive\r\n\r\n" if request.version == "1.0" else b"\r\n"
        else:
            tail = b"connection: close\r\n\r\n"
        self.out.append(
            b"%s\r\nx-request-id: %s\r\n%s%s" % (block, request.request_id, tail, data[end + 4 :])
        )
        self.complete(keep)
        return True

    def on_body(self, body: bytes) -> None:
        request = self.request
        if request is None or request.method == b"HEAD":
            return
        self.out.append(b"%x\r\n%s\r\n" % (len(body), body) if self.chunk_out else body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        request = self.request
        if request is None or request.method == b"HEAD":
            return
        keep = not self.until_close and self.parser.should_keep_alive()
        if self.chunk_out:
            self.out.append(b"0\r\n\r\n")
        self.complete(keep)

    # -- ending ---------------------------------------------------------------------------

    def complete(self, keep_alive: bool) -> None:
        """The response is written: give the connection back, and the client its turn."""
        if self.out:
            self.flush()
        request = self.request
        self.request = None
        backend = self.backend
        proxy = self.proxy
        if keep_alive and self.sending is None and not backend.removed and not self.closed:
            self.idle_since = proxy.loop.time()
            if self.paused:
                self.resume_reading()
            backend.idle.append(self)
        else:
            self.close()
        backend.inflight -= 1
        if backend.removed and backend.inflight == 0 and proxy.on_drained is not None:
            proxy.on_drained(backend)
        if request is not None:
            client = request.client
            if client is not None and not client.closed:
                client.done(request, self.code, request.node.name if request.node else None)

    def fail(self, reason: str) -> None:
        """The exchange broke: a 502 when nothing was written yet, else cut the client off."""
        request = self.request
        self.request = None
        self.close()
        if request is None:
            return
        backend = self.backend
        client = _client_of(self.proxy, request)
        if (
            client is not None
            and not self.response_started
            and self.reused
            and not request.retried
            and request.method in IDEMPOTENT
            and request.complete
            and request.received == 0
        ):
            # A kept-alive connection the instance had closed: safe to send again, once.
            self.proxy.release(backend)
            request.retried = True
            request.upstream = None
            client.send_to(request, backend)
            return
        self.proxy.release(backend)
        if client is None:
            return
        if self.response_started:
            client.close()
            return
        client.respond_failure(request, 502, f"{backend.node}: {reason}")

    def abort_exchange(self, client_gone: bool) -> None:
        """The client left or was refused: drop this exchange and the connection with it."""
        request = self.request
        if request is None:
            return
        self.request = None
        self.sending = None
        self.close()
        backend = self.backend
        if client_gone:
            self.proxy.metrics.observe(
                request.alias.name if request.alias else None,
                backend.node,
                499,
                self.proxy.loop.time() - request.started,
            )
        self.proxy.release(backend)

    def check_deadline(self, now: float, settings: ProxySettings) -> None:
        request = self.request
        if request is None:
            if self in self.backend.idle and now - self.idle_since > settings.idle_timeout:
                self.close()
            return
        if self.sending is not None:
            return  # still receiving the request body from the client
        if now - self.deadline_from <= settings.read_timeout:
            return
        if self.response_started:
            self.fail(f"{self.backend.instance} stopped sending its response")
            return
        self.request = None
        self.close()
        backend = self.backend
        self.proxy.release(backend)
        client = _client_of(self.proxy, request)
        if client is not None:
            client.respond_failure(
                request,
                504,
                f"{backend.node}: {backend.instance} did not answer within "
                f"{settings.read_timeout:g}s",
            )

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.proxy.upstreams.discard(self)
            if self in self.backend.idle:
                self.backend.idle.remove(self)
            if self.transport is not None:
                self.transport.close()


def _client_of(proxy: Proxy, request: Request) -> ClientConnection | None:
    client = request.client
    return None if client is None or client.closed else client
