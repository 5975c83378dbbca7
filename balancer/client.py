"""A client's connection: parses its requests, routes them, and answers in order.

A read holding exactly one whole request whose head bytes were parsed before skips the
parser (see balancer/head.py); any other read goes through httptools. The parser is only
bypassed between messages (`at_boundary`), so the two paths never share a message.

What a client sends that the balancer will not serve (a malformed request, an upgrade, a head
past the limits, a head too slow) is refused in order: the requests before it are answered
first, then the refusal with `connection: close`, and nothing after it is read. The limits cost
a length check per read: a head's bytes are only counted while it is incomplete. Closing while
the client may still be sending lingers (see `linger`), so its answer is not lost to a reset.
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
from balancer.http import (
    CONTINUE,
    EXECUTE_PREFIX,
    HOLD_LIMIT,
    LINGER,
    MAX_PIPELINED,
    NO_VERSION,
    error_body,
    local_response,
    versionless,
)
from balancer.proxy import Proxy
from balancer.routing import AliasRoute, NodeRoute
from balancer.settings import ProxySettings
from balancer.types import Request
from balancer.upstream import NoCallbacks, UpstreamConnection

access_log = logging.getLogger("gitops_nodes.balancer.access")
HEADS = HeadCache()  # one per process: every connection's clients send the same few heads
NO_HEADS = HeadCache(max_bytes=0)  # for connections whose limits are below HEADS' bounds


class TooManyHeaders(Exception):
    """Raised from the parser's header callback past the limit (the parser stops there)."""


class TooManyPipelined(Exception):
    """Raised from the parser's head callback when MAX_PIPELINED requests already wait."""


# An ended connection's parser, never fed: see ENDED_RESPONSE_PARSER in upstream.py.
ENDED_REQUEST_PARSER = httptools.HttpRequestParser(NoCallbacks())


class ClientConnection(asyncio.Protocol):
    """One client's connection: parses its requests and proxies them one at a time."""

    # Slots: a worker holds up to --max-clients of these, mostly idle, and a dict per
    # connection was most of an idle client's memory.
    __slots__ = (
        "active",
        "at_boundary",
        "begun",
        "body_came",
        "body_gap",
        "client_ip",
        "closed",
        "decided",
        "decided_head",
        "decided_route",
        "head_began",
        "head_bytes",
        "head_tail",
        "headers",
        "heads",
        "hop",
        "in_head",
        "last_active",
        "last_made",
        "line_done",
        "linger_until",
        "lingering",
        "max_head",
        "max_headers",
        "parser",
        "parsing",
        "paused",
        "proxy",
        "queue",
        "refusing",
        "served",
        "starting",
        "transport",
        "url",
    )

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
        settings = proxy.settings
        self.max_head = settings.max_head
        self.max_headers = settings.max_headers
        # Remembered heads are within these limits, so the fast path checks nothing.
        self.heads = HEADS if HEADS.admits(self.max_head, self.max_headers) else NO_HEADS
        # A head that is not whole yet: since when, how many bytes (an estimate for one that
        # began behind another message in a read), its last bytes (the blank line that ends
        # it may straddle two reads) and whether its request line ended.
        self.in_head = False
        self.head_began = 0.0
        self.head_bytes = 0
        self.head_tail = b""
        self.line_done = False
        # A chunked body: bytes read since body last came (framing, extensions and trailer
        # fields, which httptools gathers whole before handing over), bounded like a head.
        self.body_came = False
        self.body_gap = 0
        self.last_made: Request | None = None  # the request the parser made last
        self.served = False  # a request came: the idle timeout applies, not the header one
        # A refusal is queued or answered: nothing more is read (at_boundary stays False).
        self.refusing = False
        self.lingering = False
        self.linger_until = 0.0

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else "unknown"
        self.client_ip = address.encode()
        self.hop = hop_of(address, self.proxy.settings.trusts(address))
        proxy = self.proxy
        if len(proxy.clients) >= proxy.settings.max_clients:
            self.turn_away()
            return
        proxy.clients.add(self)

    def turn_away(self) -> None:
        """Past max_clients: answer 503 before any request, and close. The connection is not
        one of the clients: it only lingers (a request it sent already is discarded, so the
        kernel does not reset it before the client reads the 503), on a timer of its own."""
        proxy = self.proxy
        transport = self.transport
        self.refusing = self.lingering = True
        self.at_boundary = False
        request_id = proxy.request_id()
        message = (
            f"the balancer serves {proxy.settings.max_clients} client connections per worker"
            " and all are open: try again later"
        )
        transport.write(
            local_response(503, error_body(503, message, request_id), request_id, close=True)
        )
        proxy.metrics.observe(None, None, 503, 0.0)
        try:
            transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            transport.close()
            return
        proxy.loop.call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.proxy.loop.time()
        end = -1
        if self.at_boundary and self.active is None:  # never while refusing
            end = data.find(b"\r\n\r\n") + 4
            if end > 3:
                head = self.heads.get(data if end == len(data) else data[:end])
                if head is not None and end + max(head.content_length, 0) == len(data):
                    self.start(self.known(head, data[end:]))
                    return
        if self.refusing:
            return  # after a refusal nothing more is served: what comes is discarded
        at_boundary = self.at_boundary
        if at_boundary:
            if end < 0:
                end = data.find(b"\r\n\r\n") + 4
            if end > self.max_head or (end == 3 and len(data) > self.max_head):
                self.head_too_large(data.find(b"\n", 0, self.max_head) < 0)
                return
        elif self.in_head and self.head_bytes + len(data) > self.max_head:
            room = self.max_head - self.head_bytes
            if (self.head_tail + data[:room]).find(b"\r\n\r\n") < 0:
                self.head_too_large(not self.line_done and data.find(b"\n", 0, room) < 0)
                return
        continuing = self.in_head
        parsing = self.parsing
        in_chunks = parsing if parsing is not None and parsing.chunked else None
        self.body_came = False
        self.begun = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.refuse_upgrade()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, TooManyHeaders):
                self.refuse(431, f"more than {self.max_headers} header lines in the request head")
            elif isinstance(exc.__context__, TooManyPipelined):
                self.refuse(429, f"more than {MAX_PIPELINED} pipelined requests waiting")
            else:
                self.refuse(400, f"malformed request: {exc}")
        else:
            if self.in_head:
                self.head_pending(data, continuing, at_boundary)
                if at_boundary and self.begun == 1 and versionless(data):
                    self.refuse(505, NO_VERSION)
            elif (parsing := self.parsing) is not None and parsing.chunked:
                self.chunks_pending(len(data), in_chunks)
            request = self.starting
            if request is not None:
                self.starting = None
                if end > 3 and self.begun == 1 and request.complete:
                    self.remember(request, data, end)
                self.start(request)
            return
        request = self.starting  # the requests before the refused one are still answered
        if request is not None:
            self.starting = None
            self.start(request)

    def head_pending(self, data: bytes, continuing: bool, at_boundary: bool) -> None:
        """Count the bytes of a head that this read left incomplete (for max_head)."""
        if continuing and self.begun == 0:
            self.head_bytes += len(data)
        elif at_boundary and self.begun == 1:
            self.head_bytes = len(data)  # it began with this read
        else:  # it began behind another message: what the parser handed over so far
            self.head_bytes = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            self.line_done = True
        if not self.line_done:
            self.line_done = b"\n" in data
        self.head_tail = data[-3:]

    def chunks_pending(self, size: int, continuing: Request | None) -> None:
        """Count the bytes of a chunked body, not yet whole, that brought no body (max_head)."""
        if self.body_came or continuing is None or continuing is not self.parsing:
            self.body_gap = 0  # it came, or began, in this read: undercounts by at most one
            return
        self.body_gap += size
        if self.body_gap > self.max_head:
            self.refuse(
                431,
                f"the chunked body's framing and trailer fields are over the {self.max_head}"
                " byte limit",
            )

    def head_too_large(self, in_request_line: bool) -> None:
        if in_request_line:
            self.refuse(414, f"the request line is longer than the {self.max_head} byte limit")
        else:
            self.refuse(431, f"the request head is larger than the {self.max_head} byte limit")

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

    def eof_received(self) -> bool | None:
        if self.lingering:
            self.close()  # the client read our answer and closed: the linger is over
        return None  # the transport closes; a request in flight is aborted then

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.clients.discard(self)
        active = self.active
        try:
            if active is not None and active.upstream is not None:
                active.upstream.abort_exchange(client_gone=True)
            self.queue.clear()
        finally:
            self.parser = ENDED_REQUEST_PARSER  # the cycle through its callbacks (upstream.py)

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
        self.in_head = True
        self.head_began = self.last_active
        self.line_done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name, value))
        if len(headers) > self.max_headers:
            raise TooManyHeaders

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.refusing:  # behind a refused request in the same read: never answered
            self.url = b""
            self.headers = []
            return
        if len(self.queue) >= MAX_PIPELINED:  # one read of tiny requests must not pile up
            raise TooManyPipelined
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
        self.last_made = request
        self.prepare(request, head)
        self.url = b""  # ready for the next message
        self.headers = []
        if self.active is None and self.starting is None:
            self.starting = request
        else:
            self.queue.append(request)  # pipelined: answered in order
            self.pause()

    def on_body(self, body: bytes) -> None:
        self.body_came = True
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
        self.at_boundary = not self.refusing  # refusing: the fast path must not serve more
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
        if head.version not in ("1.1", "1.0"):
            message = f"HTTP/{head.version} is not served here: send HTTP/1.1 (or 1.0)"
            return self.answer(request, 505, message, close=True)
        if head.unsupported_coding:
            coding = head.unsupported_coding.decode("latin-1")
            return self.answer(
                request,
                501,
                f"transfer coding {coding!r} is not supported: send the body as it is, with a "
                "content-length or chunked",
                close=True,
            )
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
        if request.expect_continue and not request.complete:
            close = True  # answered before its body: the client need not send it
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
        self.served = True
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
        if self.last_made is request:  # an idle client keeps no request alive
            self.last_made = None
        self.last_active = request.started + elapsed
        if self.closed:
            return
        if not request.complete:
            self.linger()
            return
        if not request.keep_alive:
            if self.refusing:
                self.linger()
            else:
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
        self.refuse_body(request, 413, f"request body is over the {limit} byte limit")

    def refuse_body(self, request: Request, code: int, message: str) -> None:
        """Answer request, whose body is arriving, with code and close: its exchange with an
        instance is dropped (cut off when the instance's answer has begun)."""
        self.refusing = True
        self.at_boundary = False
        request.keep_alive = False
        if request.local is None:  # not answered by the balancer already (a 404, a 413)
            upstream = request.upstream
            if upstream is not None and upstream.response_started:
                self.close()
                return
            if upstream is not None:
                upstream.abort_exchange(client_gone=False)
            if request.backend is not None and request.upstream is None:
                self.proxy.release(request.backend)
            request.held.clear()
            self.answer(request, code, message, close=True)
        if request is self.active:
            self.finish_local(request)

    def refuse(self, code: int, message: str) -> None:
        """Refuse what the client sent from here on: the requests before it are answered in
        order, then this answer with `connection: close`; nothing more is read."""
        if self.refusing or self.closed:
            return
        request = self.parsing
        if request is not None:  # the fault is in the body of the request being read
            self.refuse_body(request, code, message)
            return
        self.refusing = True
        self.at_boundary = False
        self.pause()
        refusal = Request(b"-", b"-", "1.1", self.proxy.loop.time())
        refusal.client = self
        refusal.complete = True
        refusal.request_id = self.proxy.request_id()
        self.answer(refusal, code, message, close=True)
        if self.active is None and self.starting is None:
            self.start(refusal)
        else:
            self.queue.append(refusal)

    def refuse_upgrade(self) -> None:
        """The request the parser read last asks for a protocol upgrade: answer it 501 in its
        turn, and close."""
        request = self.last_made
        if request is None or self.refusing:
            self.refuse(501, "protocol upgrades (WebSocket) are not supported")
            return
        self.refusing = True
        self.at_boundary = False
        self.pause()
        if request.upstream is not None:  # an execute call waiting for its body
            request.upstream.abort_exchange(client_gone=False)
            request.upstream = None
        if request is self.parsing:
            self.parsing = None
        request.complete = True
        self.answer(request, 501, "protocol upgrades (WebSocket) are not supported", close=True)
        if request is self.active:
            self.finish_local(request)

    def check_deadline(self, now: float, settings: ProxySettings) -> None:
        """Enforce the client timeouts (the sweep's once-a-second call): a head still
        incomplete header_timeout after its first byte is answered 408; a connection with
        nothing in flight closes after idle_timeout (header_timeout before its first request);
        a lingering one closes at its end."""
        if self.lingering:
            if now > self.linger_until:
                self.close()
        elif self.in_head:
            if not self.refusing and now - self.head_began > settings.header_timeout:
                self.refuse(
                    408, f"the request head did not arrive within {settings.header_timeout:g}s"
                )
        elif self.active is None and not self.refusing:
            limit = settings.idle_timeout if self.served else settings.header_timeout
            if now - self.last_active > limit:
                self.close()

    def linger(self) -> None:
        """Close after an answer while the client may still be sending (a refused or
        unfinished request): send our end of the stream, then read and discard until the
        client closes or LINGER seconds pass. Closing at once with its bytes unread would
        make the kernel reset the connection, and the client could lose the answer."""
        if self.closed or self.lingering:
            return
        self.refusing = self.lingering = True
        self.at_boundary = False
        self.linger_until = self.proxy.loop.time() + LINGER
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            self.close()
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()

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
