"""A client's connection: parses its requests, routes them, and answers in order.

A read holding exactly one whole request whose head bytes were parsed before skips the
parser (see balancer/head.py); any other read goes through httptools. The parser is only
bypassed between messages (`at_boundary`), so the two paths never share a message.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import httptools

from balancer.access import CHALLENGE_LINE, Denial
from balancer.backends import Backend
from balancer.execute import ExecuteCall, begin_execute
from balancer.forwarding import Forward, Hop, forward, hop_of
from balancer.head import BAD_LENGTH, Head, HeadCache, read_head
from balancer.http import CONTINUE, EXECUTE_PREFIX, HOLD_LIMIT, error_body, local_response
from balancer.proxy import Proxy
from balancer.routing import AliasRoute, NodeRoute
from balancer.types import Request
from balancer.upstream import UpstreamConnection

access_log = logging.getLogger("gitops_nodes.balancer.access")
HEADS = HeadCache()  # one per process: every connection's clients send the same few heads


class ClientConnection(asyncio.Protocol):
    """One client's connection: parses its requests and proxies them one at a time."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b""
        self.hop = Hop(b"unknown", False, b"unknown")  # set once connected
        # The last forward() decision, by the identity of its Head (a remembered one) and its
        # route (a new table makes new routes): a client repeating itself is decided once.
        self.decided_head: Head | None = None
        self.decided_route: AliasRoute | NodeRoute | None = None
        self.decided: Forward | Denial | None = None
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
        self.at_boundary = True  # the parser holds no part of a message
        self.begun = 0  # messages begun in the read being parsed

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else "unknown"
        self.client_ip = address.encode()
        self.hop = hop_of(address, self.proxy.settings.trusts(address))
        self.proxy.clients.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.proxy.loop.time()
        end = -1
        if self.at_boundary and self.active is None:
            end = data.find(b"\r\n\r\n") + 4
            if end > 3:
                head = HEADS.get(data if end == len(data) else data[:end])
                if head is not None and end + max(head.content_length, 0) == len(data):
                    self.start(self.known(head, data[end:]))
                    return
        self.begun = 0
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
                if end > 3 and self.begun == 1 and request.complete:
                    self.remember(request, data, end)
                self.start(request)

    def known(self, head: Head, body: bytes) -> Request:
        """A request whose head was parsed before from the same bytes, body whole in hand."""
        request = Request(head.method, head.target, head.version, self.proxy.loop.time())
        request.keep_alive = head.keep_alive
        request.client = self
        request.complete = True
        self.prepare(request, head)
        if body:
            request.received = len(body)
            request.held.append(body)
            request.held_size = len(body)
        return request

    def remember(self, request: Request, data: bytes, end: int) -> None:
        """Remember a parsed head by its bytes when the read held exactly that one request."""
        head = request.parsed
        if head is not None and end + max(head.content_length, 0) == len(data):
            if head.keep_alive != request.keep_alive:  # as on_message_complete found it
                head = head._replace(keep_alive=request.keep_alive)
            HEADS.remember(data[:end], head)

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

    def on_message_begin(self) -> None:
        self.at_boundary = False
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        proxy = self.proxy
        parser = self.parser
        head = read_head(
            parser.get_method(),
            self.url,
            parser.get_http_version(),
            parser.should_keep_alive(),
            self.headers,
        )
        request = Request(head.method, head.target, head.version, proxy.loop.time())
        request.keep_alive = head.keep_alive
        request.client = self
        request.parsed = head
        self.parsing = request
        self.prepare(request, head)
        self.url = b""  # ready for the next message
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
        self.at_boundary = True
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

    def prepare(self, request: Request, head: Head) -> None:
        """Route the request from its head and build the head sent upstream."""
        proxy = self.proxy
        router = proxy.router  # one snapshot for the whole request, retries included
        request.chunked = head.chunked
        request.expect_continue = head.expect_continue
        request.folder_id = head.folder_id
        request.request_id = head.request_id or proxy.request_id()
        content_length = head.content_length
        if content_length == BAD_LENGTH:
            return self.answer(request, 400, "the content-length header is not a number")
        if content_length > proxy.settings.max_body:
            return self.answer(
                request,
                413,
                f"request body of {content_length} bytes is over the {proxy.settings.max_body}"
                " byte limit",
                close=True,
            )
        if head.target.startswith(EXECUTE_PREFIX):  # the URL names the target
            return begin_execute(self, request, router, head)
        alias_name = head.alias
        if alias_name is not None:
            alias = router.aliases.get(alias_name)
            if alias is None:
                return self.answer(
                    request, 404, f"no alias {alias_name!r}", extra={"alias": alias_name}
                )
            request.alias = alias
            if alias.prefix_rewrite and head.prefix:
                request.rewrite = (head.prefix, head.host)
            decided = self.decide(head, alias)
        elif head.node is not None:
            node = router.nodes.get(head.node)
            if node is None:
                return self.answer(
                    request, 404, f"no node {head.node!r}", extra={"node": head.node}
                )
            request.node = node
            if node.prefix_rewrite and head.prefix:
                request.rewrite = (head.prefix, head.host)
            decided = self.decide(head, node)
        elif head.path == b"/-/healthz":
            request.local = local_response(200, b'{"status": "ok"}', request.request_id, False)
            return None
        else:
            return self.answer(
                request,
                404,
                "no alias or node in the request: use /aliases/<alias>/..., /nodes/<node>/..., "
                "or the header x-node-alias or x-node-id",
            )
        if isinstance(decided, Denial):
            return self.deny(request, decided)
        request.caller = decided.caller
        request.affinity_key = decided.affinity_key
        if content_length >= 0:
            framing = b"content-length: %d\r\n" % content_length
        elif head.chunked:
            framing = b"transfer-encoding: chunked\r\n"
        else:
            framing = b""
        request.head = b"%s %s HTTP/1.1\r\n%s%sx-request-id: %s\r\n\r\n" % (
            head.method,
            head.path,
            framing,
            decided.lines,
            request.request_id,
        )
        return None

    def decide(self, head: Head, route: AliasRoute | NodeRoute) -> Forward | Denial:
        """forward() for this connection's hop, reused while the same head takes the same
        route (the result depends on nothing else)."""
        decided = self.decided
        if head is self.decided_head and route is self.decided_route and decided is not None:
            return decided
        affinity = route.affinity_header if isinstance(route, AliasRoute) else None
        decided = forward(head, self.hop, route.access, affinity, head.prefix)
        self.decided_head, self.decided_route, self.decided = head, route, decided
        return decided

    def deny(self, request: Request, denial: Denial) -> None:
        """Answer a private target's 401 (with its challenge) or 403."""
        alias, node = request.alias, request.node
        kind, target = ("alias", alias.name) if alias else ("node", node.name if node else "")
        challenge = CHALLENGE_LINE if denial.status == 401 else b""
        self.answer(request, denial.status, denial.message, extra={kind: target}, head=challenge)

    def answer(
        self,
        request: Request,
        code: int,
        message: str,
        close: bool = False,
        extra: dict[str, str] | None = None,
        head: bytes = b"",
    ) -> None:
        body = error_body(
            code, message, request.request_id or self.proxy.request_id(), **(extra or {})
        )
        request.local = local_response(code, body, request.request_id, close, head)
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
        execute = request.upstream
        if isinstance(execute, ExecuteCall):
            # An execute call has no route of its own, so start() comes here: it picks its
            # instance once its body is whole.
            execute.activate()
            return
        alias, node = request.alias, request.node
        target = alias.name if alias else node.name if node else ""
        kind = "alias" if alias else "node"
        message = f"no Healthy instance serves {kind} {target!r}"
        suspended = [n.name for n in alias.nodes if n.suspended] if alias else []
        if alias is None and node is not None and node.suspended:
            message = f"node {target!r} is suspended"
        elif suspended:
            message += f" (suspended: {', '.join(suspended)})"
        self.answer(request, 503, message)
        self.finish_local(request)

    def retry_elsewhere(self, request: Request, failed: Backend) -> bool:
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
            self._log_access(request, alias, node, code, elapsed)
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

    def _log_access(
        self, request: Request, alias: str | None, node: str | None, code: int, elapsed: float
    ) -> None:
        """One access-log record: its fields structured (the log's formatter writes them as
        one JSON object or one plain line), its message a short summary."""
        method = request.method.decode()
        target = request.target.decode("latin-1")
        access_log.info(
            "%s %s %d",
            method,
            target,
            code,
            extra={
                "fields": {
                    "client": self.client_ip.decode(),
                    "method": method,
                    "target": target,
                    "alias": alias,
                    "node": node,
                    "instance": request.backend.instance if request.backend else None,
                    "caller": request.caller,
                    "status": code,
                    "seconds": round(elapsed, 6),
                    "requestId": request.request_id.decode("latin-1"),
                }
            },
        )

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
        request_id = self.proxy.request_id()  # the same id in the header as in the body
        body = error_body(code, message, request_id)
        if self.active is None and not self.closed:
            self.transport.write(local_response(code, body, request_id, close=True))
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


def _node_of(alias: AliasRoute, backend: Backend) -> NodeRoute | None:
    return next((n for n in alias.nodes if backend in n.backends), None)
