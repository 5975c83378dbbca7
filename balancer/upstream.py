"""A kept-alive connection to one instance: sends a request, streams its response back."""

from __future__ import annotations

import asyncio
from typing import Any

import httptools

from balancer.backends import Backend
from balancer.http import (
    HOP_SEARCH,
    IDEMPOTENT,
    MAX_RESPONSE_HEAD,
    fast_head,
    strip_hop_by_hop,
)
from balancer.prefix import under_prefix
from balancer.proxy import Proxy
from balancer.settings import ProxySettings
from balancer.types import Request, client_of


class NoCallbacks:
    """A parser's protocol with no callbacks (httptools looks each one up at creation)."""


# What an ended connection keeps as its parser, never fed. Its own parser holds bound methods
# of the connection (httptools' callbacks): a reference cycle, which only a full collection
# frees, and those are rare in a large heap. A balancer runs for months and may see a
# connection end for every request (clients and instances that do not keep alive), so the
# cycle is broken when the connection ends, and reference counting frees it at once.
ENDED_RESPONSE_PARSER = httptools.HttpResponseParser(NoCallbacks())


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
        self.informed = False  # a 1xx came for this exchange (a final answer must follow)
        self.reused = False
        self.closed = False
        self.paused = False
        self.raw = b""  # the response's bytes until its head is complete
        self.code = 0
        self.chunk_out = False
        self.until_close = False
        self.out: list[bytes] = []  # response bytes for the client, written once per read
        # From now, not 0, so that a sweep between connecting and sending finds no deadline
        # passed. deadline_from: the last sign of life, for the read timeout; sent_at: when
        # the request was sent whole, for the node's request timeout.
        self.deadline_from = self.sent_at = proxy.loop.time()
        self.idle_since = 0.0

    async def connect(self, request: Request) -> None:
        """Open the connection for request, retrying once elsewhere when it fails."""
        proxy = self.proxy
        backend = self.backend
        try:
            if backend.socket is None or not await self.connect_unix(backend.socket):
                await asyncio.wait_for(
                    proxy.loop.create_connection(lambda: self, backend.host, backend.port),
                    proxy.settings.connect_timeout,
                )
        except (OSError, TimeoutError) as exc:
            self.parser = ENDED_RESPONSE_PARSER  # never connected: connection_lost won't come
            reason = f"connect to {backend.host}:{backend.port} failed: {exc or 'timed out'}"
            backend.eject(reason)
            client_request = self.request
            self.request = None
            if client_request is None or client_request.upstream is not self:
                return
            client = client_of(client_request)
            if client is None:
                proxy.release(backend)
                return
            if not client.retry_elsewhere(client_request, backend):
                client.respond_failure(client_request, 502, f"{backend.node}: {reason}")
            return
        if self.request is not request or request.upstream is not self:
            self.close()  # the client left while we were connecting
            return
        self.begin(request, reused=False)

    async def connect_unix(self, path: str) -> bool:
        """Connect over the instance's Unix socket; False (TCP then) when that fails.

        On one host a Unix socket skips the TCP/IP stack, the bridge and the NAT of a published
        port: measured through an alias to a python node, 1.15 times the requests/s. The
        instance's TCP port is what its health is checked on, so a socket that is missing or
        refuses (an instance restarting) costs one failed connect, never a failed request.
        """
        try:
            await asyncio.wait_for(
                self.proxy.loop.create_unix_connection(lambda: self, path),
                self.proxy.settings.connect_timeout,
            )
        except (OSError, TimeoutError):
            return False
        return True

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
            client = client_of(request)
            if client is not None:
                client.resume()
        else:
            self.transport.write(request.head)
        if request.complete:
            self.sending = None  # request_sent(), inlined: this is the common case
            self.deadline_from = self.sent_at = now

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def request_sent(self) -> None:
        self.sending = None
        self.deadline_from = self.sent_at = self.proxy.loop.time()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.deadline_from = self.proxy.loop.time()
        if not self.response_started:
            if not self.raw and self.request is not None and self.whole_response(data):
                return
            self.raw = self.raw + data if self.raw else data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.out.clear()
            self.protocol_error(f"{self.backend.instance} switched protocols (101) unasked")
            return
        except httptools.HttpParserError as exc:
            self.out.clear()
            self.protocol_error(f"malformed response from {self.backend.instance}: {exc}")
            return
        if not self.response_started and len(self.raw) > MAX_RESPONSE_HEAD:
            # Held whole until it ends (the head is rewritten before it goes on): an instance
            # whose head never ends would have the worker hold it all until the timeout.
            self.out.clear()
            self.protocol_error(
                f"{self.backend.instance} sent a response head over {MAX_RESPONSE_HEAD} bytes"
            )
            return
        if self.out:
            self.flush()

    def flush(self) -> None:
        out = self.out
        request = self.request
        client = client_of(request) if request is not None else None
        if client is not None:
            client.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._connection_lost(exc)
        finally:
            self.parser = ENDED_RESPONSE_PARSER

    def _connection_lost(self, exc: Exception | None) -> None:
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
        if self.informed and not self.response_started:
            self.protocol_error(f"{backend.instance} closed the connection after a 1xx answer")
            return
        reason = f"{backend.instance} closed the connection" + (f": {exc}" if exc else "")
        self.fail(reason)

    def pause_writing(self) -> None:
        request = self.sending
        client = client_of(request) if request else None
        if client is not None:
            client.pause()

    def resume_writing(self) -> None:
        request = self.sending
        client = client_of(request) if request else None
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
            self.informed = True
            return
        self.raw = b""
        self.informational = self.informed = False  # (reset here, off the fast path)
        self.code = code
        self.response_started = True
        if request is None:
            return
        client = client_of(request)
        if client is None:
            return
        lower = block.lower()
        has_length = b"\r\ncontent-length:" in lower
        chunked = b"\r\ntransfer-encoding:" in lower
        if HOP_SEARCH.search(lower) is not None:
            block = strip_hop_by_hop(block, lower)
        if not block.startswith(b"HTTP/1.1 "):
            block = b"HTTP/1.1" + block[block.find(b" ") :]
        if request.rewrite is not None:  # a prefixRewrite route's Location and cookie paths
            block = under_prefix(block, *request.rewrite)
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
        known = fast_head(data[:end])
        if known is None or end + 4 + known.length != len(data):
            return False
        self.code = known.code
        if request.keep_alive:
            tail = b"connection: keep-alive\r\n\r\n" if request.version == "1.0" else b"\r\n"
        else:
            tail = b"connection: close\r\n\r\n"
        head = known.head
        if request.rewrite is not None:  # a prefixRewrite route's Location and cookie paths
            head = under_prefix(head, *request.rewrite)
        self.out.append(
            b"%s\r\nx-request-id: %s\r\n%s%s" % (head, request.request_id, tail, data[end + 4 :])
        )
        self.complete(known.keep_alive)
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

    def protocol_error(self, reason: str) -> None:
        """The instance broke HTTP (a malformed answer, a 1xx as its last word): it is ejected
        like one that resets connections, until its health checks pass again, and the
        request is answered 502 without a retry."""
        self.backend.eject(reason)
        self.fail(reason, retry=False)

    def fail(self, reason: str, retry: bool = True) -> None:
        """The exchange broke: a 502 when nothing was written yet, else cut the client off."""
        request = self.request
        self.request = None
        self.close()
        if request is None:
            return
        backend = self.backend
        client = client_of(request)
        if (
            retry
            and client is not None
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
        """Enforce the timeouts (the sweep's once-a-second call): the node's idle timeout on
        a pooled connection; on an exchange, the node's request timeout from the request's
        end to the response's, and the balancer's read timeout on silence between reads."""
        request = self.request
        backend = self.backend
        if request is None:
            if self in backend.idle and now - self.idle_since > backend.idle_timeout:
                self.close()
            return
        if self.sending is not None:
            return  # still receiving the request body from the client
        if now - self.sent_at > backend.request_timeout:
            limit, what = backend.request_timeout, "the node's request timeout"
        elif now - self.deadline_from > settings.read_timeout:
            limit, what = settings.read_timeout, "the balancer's read timeout"
        else:
            return
        if self.response_started:
            self.fail(f"{backend.instance} did not finish its response within {limit:g}s ({what})")
            return
        self.request = None
        self.close()
        self.proxy.release(backend)
        client = client_of(request)
        if client is not None:
            client.respond_failure(
                request,
                504,
                f"{backend.node}: {backend.instance} did not answer within {limit:g}s ({what})",
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
