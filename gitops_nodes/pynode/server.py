"""The HTTP server of a python node's instance: one asyncio Protocol with httptools, no ASGI.

    python3 -m gitops_nodes.pynode.server --config /app/node.json [--host 0.0.0.0] [--port 8080]
                                          [--unix PATH (default: $GITOPS_NODES_SOCKET)]
                                          [--access-log errors|all|N]

Start-up loads the config (compiling the code once and checking it against the declared
variables), restores the checkpoint, runs the set-up code, builds the input checks and the
OpenAPI document, and only then listens (on a Unix socket too when given one: the docker
runtime gives python nodes one, for the balancer): so `GET /healthz` simply answers 200,
and a node that cannot be prepared never opens its port (the process exits 1 with the
reason on stderr). Endpoints:

    POST /  and  POST /predict   flat JSON of the inputs -> flat JSON of the outputs
    GET /healthz                 200 {"status": "ok"}
    GET /openapi.json            the OpenAPI 3.1 document of the node's API

Errors are JSON {"error_name", "error_message", ...}: 400 (not HTTP, not JSON), 404, 405,
501 (a transfer coding other than chunked), 505 (an HTTP version other than 1.0 and 1.1),
413 (body over 16 MB: refused from its content-length before any of it is read, or as soon
as a chunked body grows past it), 422 (inputs missing, mistyped or unknown: "errors" names
each field and what was expected), 500 (the code raised: its exception's type and message,
plus "traceback" lines when the config says so; an output not set; a response over 16 MB).

Requests are answered in turns: those read while the event loop polled once (one from each
of several connections, or several pipelined on one) are queued, then their code runs back
to back, then their answers are written. Running the code right after the network stack has
run costs it much of the processor's caches; a turn pays that once, not once per request
(see `Service.answer_turn`). A node with `batch` in its config is served by
`BatchingService`: its waiting requests are gathered across turns into batches, each one run
of the code (`Node.run_batch`); a node without it runs exactly as before.

The request path allocates little: the body is read whole into the bytes httptools hands
over (joined only when it came in pieces), the route is one dict lookup, responses are one
formatted write, and there is no task, future or timer per request. Clients send the same
head over and over (the balancer's pooled connections, a load generator, a script in a loop),
so a read that holds exactly one whole request whose head bytes were parsed before is
queued without the parser: see `Known`.

The access log goes to standard output, one line per request logged: method, path, status,
and microseconds from the end of the request's head to its answer (its wait in the turn
included); the stream is flushed within 0.1 s, not per line. An instance runs for months and
its output is kept by the engine, so by default only errors (status 400 or more) are logged;
$GITOPS_NODES_ACCESS_LOG=all logs every request, and an integer N one in N of the others.
Successful health checks (the balancers' `GET /healthz`, every few seconds) are never logged.
Keep-alive follows HTTP/1.1 and HTTP/1.0 rules; pipelined requests are answered in order.
A kept-alive connection between requests has no idle timeout (the balancer pools them, and
a pooled connection closed under it would fail a POST it cannot send again). What any client
of the published port can make an instance hold is bounded instead: a request head is at most
MAX_HEAD bytes (431, or 414 for the request line alone) and must be whole within HEAD_TIMEOUT
seconds of the read that began it (408); a new connection that sends nothing for
HEAD_TIMEOUT is closed; a body stalled for BODY_TIMEOUT is 408; the bodies the instance holds
unfinished, over all its connections, are at most MAX_PENDING bytes (503 to the connection
whose read would pass it); at most MAX_PIPELINED requests of one connection wait in a turn
(429 after their answers); answers a client leaves unread, none of them draining for
WRITE_TIMEOUT, cut its connection; each listening socket serves at most MAX_CONNECTIONS
connections (503 to a new one past it; the port and the balancer's Unix socket are counted
apart, so a flood of the port does not shut the balancer out). These refusals close the
connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import httptools

from gitops_nodes.pynode.codec import Codec
from gitops_nodes.pynode.config import NodeConfig, load_config
from gitops_nodes.pynode.errors import PyNodeError
from gitops_nodes.pynode.node import MAX_BYTES, Node, names, prepare
from gitops_nodes.pynode.openapi import document

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}
CALL, HEALTH, OPENAPI = 1, 2, 3
ROUTES = {b"/": CALL, b"/predict": CALL, b"/healthz": HEALTH, b"/openapi.json": OPENAPI}
ALLOWED = {CALL: b"POST", HEALTH: b"GET, HEAD", OPENAPI: b"GET, HEAD"}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# A response is HEADS[status] + content-length digits + one of these + the body.
KEEP_ALIVE = b"\r\n\r\n"
KEEP_ALIVE_ASKED = b"\r\nconnection: keep-alive\r\n\r\n"  # HTTP/1.0 clients need to hear it
CLOSE = b"\r\nconnection: close\r\n\r\n"
LINGER = 2.0  # seconds a refused connection keeps reading (and dropping) before it closes
# A request head (its line and header lines) is bounded in size and in time, or one client
# could make an instance hold without end what httptools gathers of it. Both are well past
# what a balancer sends (its own limit is 32 KiB, the head whole in one write).
MAX_HEAD = 64 * 1024  # bytes; past it 431, or 414 when the request line alone is longer
HEAD_TIMEOUT = 30.0  # seconds for a head to be whole once a read left it begun; past it 408
# The same for what else one client can make an instance hold: a body, a connection. A body
# goes on as long as it keeps coming (a large upload on a slow link is not an attack); how
# much of all connections' unfinished bodies is held is what bounds memory.
BODY_TIMEOUT = 30.0  # seconds an unfinished body may go without a byte; past it 408
MAX_PENDING = 128 * 2**20  # bytes of unfinished bodies held, all connections; past it 503
MAX_CONNECTIONS = 10_000  # open connections per listening socket; a new one past it 503
# Requests of one connection waiting in a turn (pipelined: sent before the earlier were
# answered). Each waits with its answer until the turn's writes, and orjson's answers keep a
# 4 KiB buffer each: 60,000 tiny pipelined requests (3 MB) held 240 MB at once. As the
# balancer does: 429 after the answers to those before it, then closed.
MAX_PIPELINED = 100
# A client that stops reading its answers holds them in the instance's write buffer (up to a
# 16 MB answer each): its connection is cut once they have not drained at all for this long.
WRITE_TIMEOUT = 60.0
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
FLUSH_DELAY = 0.1  # seconds the access log may wait before it is flushed
ACCESS_LOG_ENV = "GITOPS_NODES_ACCESS_LOG"  # errors (the default), all, or N: one in N
ERRORS_ONLY = 0  # Service.every: log no successful request, only errors
HEALTH_PATH = b"/healthz"


def _head(status: int, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d %s\r\n%scontent-type: application/json\r\ncontent-length: " % (
        status,
        REASONS[status],
        extra,
    )


HEADS = {status: _head(status) for status in REASONS}
NOT_ALLOWED_HEADS = {
    route: _head(405, b"allow: %s\r\n" % allow) for route, allow in ALLOWED.items()
}

perf_counter_ns = time.perf_counter_ns
new_request = tuple.__new__
EXPECT_WINDOW = 10  # maxDelays a batched node expects an answered caller back within
EXPECT_SLACK = 10_000_000  # ns added to it (a client's turnaround on a busy machine)
EXPECT_MAX = 1_000_000_000  # ns: at most a second
KNOWN_LIMIT = 256  # distinct heads remembered; a client that varies them gets the parser
KNOWN_MAX_BYTES = 4096  # longer heads are parsed every time


class Known(NamedTuple):
    """A request head parsed before: everything its answer depends on, remembered by its bytes.

    The answer to a request depends on its head only through these fields, so a later read
    holding the same head bytes (and exactly the body its content-length announces) is
    answered from them directly. Entries are made by the parser from identical bytes, so the
    two paths cannot disagree; heads with a chunked body, `Expect` or `Upgrade`, and heads of
    unknown paths, are never remembered.
    """

    route: int
    method: bytes
    path: bytes
    content_length: int  # of the body that follows the head (0 when none was given)
    keep_alive: bool
    keep_alive_asked: bool


class Request(NamedTuple):
    """A whole request, read and waiting for its turn; or one being refused.

    Made on the request path with `new_request(Request, fields)`: the same value as
    `Request(*fields)` without the Python call of NamedTuple's own __new__ (0.4 µs).
    """

    connection: Connection
    route: int
    method: bytes
    path: bytes
    body: bytes
    keep_alive: bool
    keep_alive_asked: bool
    started: int  # perf_counter_ns() at the end of its head


class Service:
    """What every connection of one instance shares: the node, fixed answers, the log."""

    def __init__(
        self,
        node: Node,
        loop: asyncio.AbstractEventLoop,
        access_log: BinaryIO | None,
        max_body: int = MAX_BYTES,
        every: int = ERRORS_ONLY,
    ) -> None:
        self.node = node
        self.run = node.run
        self.error = node.error
        self.loop = loop
        self.max_body = max_body
        self.health = node.dumps({"status": "ok"})
        self.openapi = node.dumps(document(node.config, max_body))  # generated once
        self.access_log = access_log
        self.every = every  # log one successful request in every; ERRORS_ONLY: none
        self.unlogged = 0  # successful requests not logged since the last one that was
        self.flush_armed = False
        self.connections: set[Connection] = set()
        self.known: dict[bytes, Known] = {}  # shared by connections: see Known
        self.turn: list[Request] = []  # read, not yet answered: see answer_turn
        self.turn_armed = False
        self.unix_server: asyncio.AbstractServer | None = None  # see start()
        self.pending = 0  # bytes of unfinished request bodies held (MAX_PENDING)

    def queue(self, request: Request) -> None:
        """Queue a whole request; the turn is answered once the loop has read what it polled."""
        self.turn.append(request)
        if not self.turn_armed:
            self.turn_armed = True
            self.loop.call_soon(self.answer_turn)

    def answer_turn(self) -> None:
        """Answer the queued requests in the order they were read: code first, then writes.

        Measured on the example's iris model under 16 connections, the first call after the
        network stack ran took 1.2 to 1.5 times as long as the next ones (about 9 a turn);
        answering each request as it was read made every call such a first one. So a turn's
        code runs back to back, and its writes (each a trip through the kernel's network
        stack) come after. Requests still run one at a time, in the order they were read.
        """
        self.turn_armed = False
        requests = self.turn
        if not requests:
            return
        self.turn = []
        run = self.run
        outcomes = [
            run(r.body) if r.route == CALL and r.method == b"POST" else self.local(r)
            for r in requests
        ]
        for request, (status, payload) in zip(requests, outcomes, strict=True):
            connection = request.connection
            connection.queued -= 1
            connection.respond(request, status, payload)

    def local(self, request: Request) -> tuple[int, bytes]:
        """The answer to a request that does not run the code: health, OpenAPI, 404, 405."""
        route = request.route
        method = request.method
        if route == HEALTH and (method == b"GET" or method == b"HEAD"):
            return 200, self.health
        if route == OPENAPI and (method == b"GET" or method == b"HEAD"):
            return 200, self.openapi
        path = request.path.decode("latin-1")
        if route:
            return 405, self.error(
                "MethodNotAllowed",
                f"{method.decode('latin-1')} is not allowed on {path}: "
                f"use {ALLOWED[route].decode()}",
            )
        return 404, self.error(
            "NotFound",
            f"no endpoint {path}: the node answers POST / (or POST /predict), GET /healthz "
            "and GET /openapi.json",
        )

    def remember(self, raw: bytes, known: Known) -> None:
        """Remember a head by its exact bytes, within KNOWN_LIMIT entries."""
        if len(raw) > KNOWN_MAX_BYTES:
            return
        if len(self.known) >= KNOWN_LIMIT:
            self.known.clear()  # a client that varies its heads is parsed, nothing worse
        self.known[raw] = known

    def logged(self, method: bytes, path: bytes, status: int, started: int) -> None:
        """Write the request's log line when it is to be logged (see ACCESS_LOG_ENV);
        flushed a moment later, with its neighbours."""
        log = self.access_log
        if log is None:
            return
        if status < 400:
            every = self.every
            if every == ERRORS_ONLY or path == HEALTH_PATH:
                return
            self.unlogged += 1
            if self.unlogged < every:
                return
            self.unlogged = 0
        micros = (perf_counter_ns() - started) // 1000
        log.write(b"%s %s %d %dus\n" % (method, path, status, micros))
        if not self.flush_armed:
            self.flush_armed = True
            self.loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Flush the access log (a closed or broken stdout is ignored)."""
        self.flush_armed = False
        if self.access_log is not None:
            with contextlib.suppress(OSError, ValueError):
                self.access_log.flush()

    def lost(self, connection: Connection) -> None:
        """A connection closed: forget it."""
        self.connections.discard(connection)

    def close_connections(self) -> None:
        """Close every client connection (shutdown: answer the turn first, see Connection)."""
        self.answer_turn()
        for connection in list(self.connections):
            connection.close()


class BatchingService(Service):
    """A Service for a node with `batch`: requests are gathered into batches, each one run of
    the code (Node.run_batch).

    Waiting requests form the next batch, which runs when it holds `maxSize` calls, when
    `maxDelay` has passed since its first call's head was read, or as soon as no other
    request is to be expected. Expected are the connections whose calls were answered within
    the last EXPECT_WINDOW maxDelays and that have not sent another since (nor closed): a
    client in a loop, a load generator's connections, the balancer's pooled connections
    under load. So a lone caller is not kept waiting (its own next request is the one
    expected: it runs at once; only within the window after a burst of other callers may it
    wait maxDelay for them), while under load a batch waits, event-driven and without
    polling, for the callers recently answered, up to maxDelay. (Only the last batch's
    callers is not enough: on a busy machine requests trickle in, a batch of one would then
    forget the other callers, and batches would stay small.) The code runs on the event
    loop's thread as in Service, so batches run one at a time and requests keep the order
    they were read in; other requests (health, OpenAPI, errors) wait with the batch they
    came with, which keeps a connection's answers in order.
    """

    def __init__(
        self,
        node: Node,
        loop: asyncio.AbstractEventLoop,
        access_log: BinaryIO | None,
        max_body: int = MAX_BYTES,
        every: int = ERRORS_ONLY,
    ) -> None:
        super().__init__(node, loop, access_log, max_body, every)
        batch = node.config.batch
        assert batch is not None
        self.max_size = batch.max_size
        self.max_delay = int(batch.max_delay * 1e9)  # ns
        self.run_batch = node.run_batch
        self.calls = 0  # calls (POST / and /predict) waiting in self.turn
        self.first = 0  # perf_counter_ns() at the end of the first waiting call's head
        # Connections answered recently and not heard from since: when each was answered.
        self.expected: dict[Connection, int] = {}
        self.window = min(EXPECT_WINDOW * self.max_delay + EXPECT_SLACK, EXPECT_MAX)
        self.deadline: asyncio.TimerHandle | None = None  # maxDelay after the first call

    def queue(self, request: Request) -> None:
        self.turn.append(request)
        if request.route == CALL and request.method == b"POST":
            if not self.calls:
                self.first = request.started
            self.calls += 1
            self.expected.pop(request.connection, None)
        if not self.turn_armed:
            self.turn_armed = True
            self.loop.call_soon(self.gather)

    def lost(self, connection: Connection) -> None:
        super().lost(connection)
        expected = self.expected
        if connection in expected:
            del expected[connection]
            if not expected and self.turn and not self.turn_armed:
                self.turn_armed = True
                self.loop.call_soon(self.gather)

    def gather(self) -> None:
        """Run the waiting batch now, unless it may still grow: then wait for its callers,
        or for maxDelay."""
        self.turn_armed = False
        if not self.turn:
            return
        if self.calls and self.calls < self.max_size and self.expected:
            remaining = self.first + self.max_delay - perf_counter_ns()
            if remaining > 0:
                if self.deadline is None:
                    self.deadline = self.loop.call_later(remaining / 1e9, self.due)
                return
        self.answer_turn(keep_rest=True)

    def due(self) -> None:
        """maxDelay has passed since the waiting batch's first call came: run it."""
        self.deadline = None
        self.answer_turn()

    def answer_turn(self, keep_rest: bool = False) -> None:
        """Run the waiting requests now: calls in batches of at most maxSize, then the answers
        written in the order the requests were read. With keep_rest, calls past the last full
        batch (and what came after them) wait to join the next one rather than run as a small
        batch of their own."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        requests = self.turn
        if not requests:
            return
        size = self.max_size
        calls = [
            index for index, r in enumerate(requests) if r.route == CALL and r.method == b"POST"
        ]
        rest: list[Request] = []
        left = len(calls) % size
        if keep_rest and len(calls) > size and left:
            cut = calls[-left]
            rest = requests[cut:]
            requests = requests[:cut]
            del calls[-left:]
            self.first = rest[0].started  # a call: the first of those left
        self.turn = rest
        self.calls = left if rest else 0
        outcomes: list[tuple[int, bytes] | None] = [None] * len(requests)
        for begin in range(0, len(calls), size):
            batch = calls[begin : begin + size]
            answers = self.run_batch([requests[index].body for index in batch])
            for index, answer in zip(batch, answers, strict=True):
                outcomes[index] = answer
        now = perf_counter_ns()
        since = now - self.window
        expected = {c: t for c, t in self.expected.items() if t > since}
        for request, outcome in zip(requests, outcomes, strict=True):
            connection = request.connection
            connection.queued -= 1
            if outcome is None:
                status, payload = self.local(request)
            else:
                status, payload = outcome
                if request.keep_alive:
                    expected[connection] = now
            connection.respond(request, status, payload)
            if connection.closing or connection.queued:  # gone, or its next one came
                expected.pop(connection, None)
        self.expected = expected
        if rest and not self.turn_armed:
            self.turn_armed = True
            self.loop.call_soon(self.gather)


class Listener:
    """The connections open on one listening socket (at most MAX_CONNECTIONS)."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = 0


class _NoCallbacks:
    """A parser's protocol with no callbacks (httptools looks each one up at creation)."""


# What an ended connection keeps as its parser, never fed. Its own parser holds bound methods
# of the connection (httptools' callbacks): a reference cycle, freed only by a full
# collection, for every connection that ends (each health check that does not keep alive).
ENDED_PARSER = httptools.HttpRequestParser(_NoCallbacks())


class Connection(asyncio.Protocol):
    """One client connection: parses its requests and queues each whole one for its turn.

    Requests to one instance run one at a time, which keeps the shared namespace consistent:
    the node's code runs synchronously in `Service.answer_turn`, on the event loop's one
    thread, so no other request of any connection can start until it returns. That is the
    serialisation; there is no lock, no thread pool and no task per request. A connection's
    answers are written in the order its requests came: what is written at once (a refusal,
    100 Continue) first answers the queued turn.
    """

    __slots__ = (
        "active",
        "at_boundary",
        "begun",
        "body",
        "body_came",
        "body_gap",
        "body_seen",
        "body_timer",
        "chunked",
        "chunks",
        "closing",
        "coding",
        "content_length",
        "expect",
        "fresh",
        "head_bytes",
        "head_tail",
        "head_timer",
        "held",
        "in_head",
        "keep_alive_asked",
        "known",
        "line_done",
        "listener",
        "max_body",
        "method",
        "parser",
        "path",
        "queued",
        "read",
        "read_end",
        "received",
        "route",
        "run",
        "service",
        "started",
        "transport",
        "upgrade",
        "url",
        "write_backlog",
        "write_timer",
    )

    def __init__(self, service: Service, listener: Listener) -> None:
        self.service = service
        self.listener = listener
        self.run = service.run
        self.known = service.known
        self.max_body = service.max_body
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.closing = False  # answered for the last time: further bytes are dropped
        self.at_boundary = True  # the parser holds no part of a message
        # The read being parsed, where its first head ends (-1: not at a boundary, or no
        # whole head in it), and how many messages began in it: to remember a head (Known).
        self.read = b""
        self.read_end = -1
        self.begun = 0
        self.queued = 0  # this connection's requests waiting in the turn
        # A head the parser holds only part of: its bytes so far (at least), the last 3 of
        # them (to find its end across reads), whether its request line is whole, its 408.
        self.in_head = False
        self.head_bytes = 0
        self.head_tail = b""
        self.line_done = False
        self.head_timer: asyncio.TimerHandle | None = None
        # A chunked body: bytes read since body last came (framing, extensions, trailer
        # fields, which httptools gathers whole before handing over), bounded like a head.
        self.body_came = False
        self.body_gap = 0
        # An unfinished body: when a read last brought some of it (loop time), its 408's
        # timer, and how many of its bytes are counted in Service.pending.
        self.body_seen = 0.0
        self.body_timer: asyncio.TimerHandle | None = None
        self.held = 0
        self.fresh = True  # nothing read yet: closed when it stays so (HEAD_TIMEOUT)
        # Answers the client is not reading: their bytes when last looked at, and the timer
        # that looks (WRITE_TIMEOUT), from pause_writing to resume_writing.
        self.write_backlog = 0
        self.write_timer: asyncio.TimerHandle | None = None
        self.method = b"-"
        self.path = b"-"
        self.route = 0
        self.started = 0
        self.reset()

    def reset(self) -> None:
        """Forget the request just answered (cheaper than an on_message_begin callback)."""
        if self.body_timer is not None:  # its body came in several reads (body_pending)
            self.release()
        self.active = False
        self.url = b""
        self.body = b""
        self.chunks: list[bytes] | None = None  # set when the body comes in several pieces
        self.received = 0
        self.content_length = -1
        self.expect = False
        self.chunked = False
        self.coding = b""  # the transfer-encoding lines' codings, when any came
        self.keep_alive_asked = False
        self.upgrade = False  # an Upgrade header came: see on_message_complete

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.service.connections.add(self)
        listener = self.listener
        listener.open += 1
        if listener.open > MAX_CONNECTIONS:
            self.refuse_lingering(
                503,
                "TooManyConnections",
                f"this instance already serves {MAX_CONNECTIONS} connections on this socket; "
                "try again when some have closed",
            )
            return
        self.head_timer = self.service.loop.call_later(HEAD_TIMEOUT, self.head_late)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # refused (413, 400): what the client still sends is read and dropped
        if self.fresh:
            self.fresh = False
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None
        end = -1
        if self.at_boundary:
            end = data.find(b"\r\n\r\n") + 4
            if end > 3:
                known = self.known.get(data if end == len(data) else data[:end])
                if known is not None and end + known.content_length == len(data):
                    request = (
                        self,
                        known.route,
                        known.method,
                        known.path,
                        data[end:],
                        known.keep_alive,
                        known.keep_alive_asked,
                        perf_counter_ns(),
                    )
                    self.queue(new_request(Request, request))
                    return
        at_boundary = self.at_boundary
        if at_boundary:
            if end > MAX_HEAD or (end == 3 and len(data) > MAX_HEAD):
                self.head_too_large(data.find(b"\n", 0, MAX_HEAD) < 0)
                return
        elif self.in_head and self.head_bytes + len(data) > MAX_HEAD:
            room = MAX_HEAD - self.head_bytes
            if (self.head_tail + data[:room]).find(b"\r\n\r\n") < 0:
                self.head_too_large(not self.line_done and data.find(b"\n", 0, room) < 0)
                return
        continuing = self.in_head
        in_chunks = self.active and self.chunked  # a chunked body began in an earlier read
        self.body_came = False
        self.read = data
        self.read_end = end
        self.begun = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Answered (or refused) in on_message_complete; what follows is another protocol.
            if self.closing:
                pass
            elif self.active:
                self.refuse(400, "BadRequest", "protocol upgrades are not supported")
            else:
                self.close()
        except httptools.HttpParserError as exc:
            if not self.closing:
                self.refuse(400, "BadRequest", f"malformed HTTP request: {exc}")
        except Exception as exc:  # a fault of the runtime itself: answer it, keep serving
            if not self.closing:
                message = f"the node's runtime failed: {type(exc).__name__}: {exc}"
                self.refuse(500, "InternalError", message)
        else:
            if self.in_head and not self.closing:
                if at_boundary and self.begun == 1 and versionless(data):
                    self.refuse_lingering(505, "HTTPVersionNotSupported", NO_VERSION)
                else:
                    self.head_pending(data, continuing, at_boundary)
            elif self.active and not self.closing:
                if self.chunked:
                    self.chunks_pending(len(data), in_chunks and self.begun == 0)
                if not self.closing:
                    self.body_pending()
        self.read = b""

    def body_pending(self) -> None:
        """Count the body this read left unfinished in Service.pending (MAX_PENDING); time
        it (BODY_TIMEOUT)."""
        service = self.service
        self.body_seen = service.loop.time()
        if self.received != self.held:
            service.pending += self.received - self.held
            self.held = self.received
            if service.pending > MAX_PENDING:
                self.refuse_lingering(
                    503,
                    "Busy",
                    f"the request bodies this instance is receiving are over {MAX_PENDING} "
                    "bytes together; try again in a moment",
                )
                return
        if self.body_timer is None:
            self.body_timer = service.loop.call_later(BODY_TIMEOUT, self.body_late)

    def body_late(self) -> None:
        self.body_timer = None
        if not self.active or self.closing or self.in_head:
            return
        quiet = self.service.loop.time() - self.body_seen
        if quiet < BODY_TIMEOUT:  # some came meanwhile: wait for the rest of the timeout
            self.body_timer = self.service.loop.call_later(BODY_TIMEOUT - quiet, self.body_late)
            return
        message = f"nothing of the request body came for {BODY_TIMEOUT:g} s"
        self.refuse_lingering(408, "RequestTimeout", message)

    def release(self) -> None:
        """Take this connection's unfinished body out of Service.pending; drop its timer."""
        self.service.pending -= self.held
        self.held = 0
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def chunks_pending(self, size: int, continuing: bool) -> None:
        """Count the bytes of an unfinished chunked body that brought no body (MAX_HEAD)."""
        if self.body_came or not continuing:
            self.body_gap = 0  # undercounts by at most this read
            return
        self.body_gap += size
        if self.body_gap > MAX_HEAD:
            self.refuse_lingering(
                431,
                "RequestHeaderFieldsTooLarge",
                f"the chunked body's framing and trailer fields are over {MAX_HEAD} bytes",
            )

    def head_pending(self, data: bytes, continuing: bool, at_boundary: bool) -> None:
        """Count the bytes of a head this read left incomplete (MAX_HEAD); time it."""
        if continuing and self.begun == 0:
            self.head_bytes += len(data)
        elif at_boundary and self.begun == 1:
            self.head_bytes = len(data)  # it began with this read
        else:  # it began behind another message: at least its request target so far
            self.head_bytes = len(self.url)
            self.line_done = True
        if not self.line_done:
            self.line_done = b"\n" in data
        self.head_tail = data[-3:]
        if self.head_timer is None:
            self.head_timer = self.service.loop.call_later(HEAD_TIMEOUT, self.head_late)

    def head_too_large(self, in_request_line: bool) -> None:
        if in_request_line:
            self.refuse_lingering(
                414, "URITooLong", f"the request line is longer than {MAX_HEAD} bytes"
            )
        else:
            self.refuse_lingering(
                431, "RequestHeaderFieldsTooLarge", f"the request head is over {MAX_HEAD} bytes"
            )

    def head_late(self) -> None:
        self.head_timer = None
        if self.fresh and not self.closing:
            self.close()  # a connection that never sent anything: no request to answer
        elif self.in_head and not self.closing:
            message = f"the request head was not whole {HEAD_TIMEOUT:g} s after it began"
            self.refuse_lingering(408, "RequestTimeout", message)

    def eof_received(self) -> bool | None:
        return None  # the client is done sending: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.listener.open -= 1
        if self.head_timer is not None:
            self.head_timer.cancel()  # it holds the connection for HEAD_TIMEOUT otherwise
            self.head_timer = None
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        self.release()
        self.body = b""
        self.chunks = None
        self.parser = ENDED_PARSER  # the cycle through its callbacks, broken at once
        self.service.lost(self)

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its (pipelined) requests.
        self.transport.pause_reading()
        self.write_backlog = self.transport.get_write_buffer_size()
        if self.write_timer is None:
            self.write_timer = self.service.loop.call_later(WRITE_TIMEOUT, self.write_late)

    def resume_writing(self) -> None:
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        self.transport.resume_reading()

    def write_late(self) -> None:
        """Cut a connection whose answers have not drained at all for WRITE_TIMEOUT; one
        that drains, however slowly, is looked at again."""
        self.write_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        backlog = transport.get_write_buffer_size()
        if backlog < self.write_backlog:
            self.write_backlog = backlog
            self.write_timer = self.service.loop.call_later(WRITE_TIMEOUT, self.write_late)
            return
        self.closing = True
        # A reset, not a close: the kernel would otherwise keep offering the answers it holds
        # (megabytes) to a client that acknowledges without reading, for as long as it does.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        transport.abort()

    def close(self) -> None:
        """Close the connection now (its queued requests answered first)."""
        self.answer_queued()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.at_boundary = False
        self.begun += 1
        self.in_head = True
        self.line_done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name)  # compared first, so most headers cost no lower()
        if size == 14 and name.lower() == b"content-length":
            self.content_length = int(value) if value.isdigit() else -1
        elif size == 10 and name.lower() == b"connection":
            self.keep_alive_asked = b"keep-alive" in value.lower()
        elif size == 6 and name.lower() == b"expect":
            self.expect = value.lower() == b"100-continue"
        elif size == 7 and name.lower() == b"upgrade":
            self.upgrade = True
        elif size == 17 and name.lower() == b"transfer-encoding":
            self.chunked = True  # any transfer coding: such heads are never remembered
            self.coding += b"," + value.lower()  # all of them, in order: see unsupported()

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self.closing:
            return
        self.started = perf_counter_ns()
        self.active = True
        url = self.url
        if url[:1] != b"/" and b"://" in url[:9]:  # absolute-form, which servers must accept
            url = url.partition(b"://")[2]  # then its authority is cut off
            cut = [i for i in (url.find(b"/"), url.find(b"?")) if i >= 0]
            url = url[min(cut) :] if cut else b""
        path = url.partition(b"?")[0] if b"?" in url else url
        self.path = path or b"/"
        self.method = self.parser.get_method()
        self.route = ROUTES.get(self.path, 0)
        version = self.parser.get_http_version()
        if self.content_length > self.max_body:
            self.too_large(f"the request body is {self.content_length} bytes,")
        elif version != "1.1" and version != "1.0":
            message = f"HTTP/{version} is not served here: send HTTP/1.1 (or 1.0)"
            self.refuse_lingering(505, "HTTPVersionNotSupported", message)
        elif self.coding and (coding := unsupported(self.coding)):
            self.refuse_lingering(
                501,
                "NotImplemented",
                f"transfer coding {coding!r} is not supported: send the body as it is, with a "
                "content-length or chunked",
            )
        elif self.expect:
            self.answer_queued()
            self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        self.body_came = True
        self.received += len(body)
        if self.received > self.max_body:
            self.too_large("the request body grows")  # chunked: its size was not given
            return
        if self.chunks is not None:
            self.chunks.append(body)
        elif self.body:
            self.chunks = [self.body, body]
        else:
            self.body = body

    def on_message_complete(self) -> None:
        self.at_boundary = True
        if self.closing:
            return
        # should_keep_alive() is only right inside this callback.
        keep_alive = self.parser.should_keep_alive()
        route = self.route
        if self.upgrade and self.parser.should_upgrade():
            # httptools stops before the body of an upgrade request (h2c, WebSocket), so
            # only a request without one can be answered; the connection then closes.
            if route == CALL:
                self.refuse(400, "BadRequest", "protocol upgrades are not supported")
                return
            keep_alive = False
        elif route and not self.chunked and not self.expect and self.begun == 1:
            self.remember(keep_alive)
        body = self.body if self.chunks is None else b"".join(self.chunks)
        self.queue(
            Request(
                self,
                route,
                self.method,
                self.path,
                body,
                keep_alive,
                self.keep_alive_asked,
                self.started,
            )
        )
        self.reset()

    def remember(self, keep_alive: bool) -> None:
        """Remember this request's head when the read held exactly it and its body (Known)."""
        end = self.read_end
        length = max(self.content_length, 0)
        if end > 3 and end + length == len(self.read):
            known = Known(
                self.route, self.method, self.path, length, keep_alive, self.keep_alive_asked
            )
            self.service.remember(self.read[:end], known)

    def queue(self, request: Request) -> None:
        """Queue a whole request for the turn; after a last one, read no further."""
        if self.queued >= MAX_PIPELINED:
            self.refuse_lingering(
                429,
                "TooManyRequests",
                f"more than {MAX_PIPELINED} pipelined requests wait for their answers on this "
                "connection; send more once those are answered",
            )
            return
        self.queued += 1
        if not request.keep_alive:
            self.closing = True  # its answer closes the connection: drop what follows
        self.service.queue(request)

    def answer_queued(self) -> None:
        """Answer the turn now when it holds requests of this connection (order of answers)."""
        if self.queued:
            self.service.answer_turn()

    # -- answers --------------------------------------------------------------------------

    def respond(self, request: Request, status: int, payload: bytes) -> None:
        """Write one whole response, and close the connection unless it is kept alive."""
        transport = self.transport
        if transport is None or transport.is_closing():
            self.service.logged(request.method, request.path, status, request.started)
            return  # the client is gone; its request was still run, as it was read
        keep_alive = request.keep_alive
        tail = CLOSE
        if keep_alive:
            tail = KEEP_ALIVE_ASKED if request.keep_alive_asked else KEEP_ALIVE
        head = NOT_ALLOWED_HEADS[request.route] if status == 405 else HEADS[status]
        size = len(payload)
        # Logged before the write, so the line exists once the client has its answer.
        self.service.logged(request.method, request.path, status, request.started)
        if request.method == b"HEAD":
            transport.write(b"%s%d%s" % (head, size, tail))
        elif size < 65536:
            transport.write(b"%s%d%s%s" % (head, size, tail, payload))
        else:  # no copy of a large body
            transport.write(b"%s%d%s" % (head, size, tail))
            transport.write(payload)
        if not keep_alive:
            self.closing = True
            transport.close()

    def refuse(self, status: int, name: str, message: str) -> None:
        """Answer with an error and stop reading this connection's requests."""
        self.answer_queued()
        if not self.active:
            self.started = perf_counter_ns()
            self.method = self.path = b"-"
        request = Request(self, 0, self.method, self.path, b"", False, False, self.started)
        self.respond(request, status, self.service.error(name, message))

    def too_large(self, what: str) -> None:
        """413 before reading past the limit; then drop what follows, and close.

        The connection is half-closed after the answer and lingers a moment, reading and
        dropping, so that a client still sending its body gets the 413 rather than a reset.
        """
        message = f"{what} over the limit of {self.max_body} bytes ({self.max_body / 2**20:g} MB)"
        self.refuse_lingering(413, "RequestTooLarge", message)

    def refuse_lingering(self, status: int, name: str, message: str) -> None:
        """Answer with an error to a client that may still be sending; then drop what
        follows, and close (see too_large)."""
        self.answer_queued()
        self.release()
        self.body = b""  # not held while the connection lingers
        self.chunks = None
        if not self.active:  # refused before its head was whole
            self.started = perf_counter_ns()
            self.method = self.path = b"-"
        transport = self.transport
        payload = self.service.error(name, message)
        self.service.logged(self.method, self.path, status, self.started)
        transport.write(b"%s%d%s%s" % (HEADS[status], len(payload), CLOSE, payload))
        self.closing = True
        if transport.can_write_eof():
            transport.write_eof()
            self.service.loop.call_later(LINGER, transport.close)
        else:
            transport.close()


def versionless(data: bytes) -> bool:
    """Whether data, a read that began a request, has a whole request line without an HTTP
    version (HTTP/0.9's `GET /`): such a client sends no header lines, and would otherwise be
    held until the header timeout. (The balancer's twin is balancer/http.py's: python nodes'
    images carry no balancer.)"""
    line, newline, _ = data.lstrip(b"\r\n").partition(b"\n")
    return bool(newline) and len(line.split()) == 2


NO_VERSION = "a request line without an HTTP version (HTTP/0.9) is not served here: send HTTP/1.1"


def unsupported(codings: bytes) -> str:
    """The first transfer coding other than chunked (gzip, say), when chunked comes last;
    "" otherwise: chunked alone is read, and a body whose last coding is not chunked has no
    length the parser can find (it answers 400, as RFC 9112 6.3 asks)."""
    listed = [c.strip() for c in codings.split(b",") if c.strip()]
    if listed[-1:] != [b"chunked"]:
        return ""
    return next((c.decode("latin-1") for c in listed if c != b"chunked"), "")


# -- running it -------------------------------------------------------------------------


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed, else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def start(
    node: Node,
    host: str,
    port: int,
    access_log: BinaryIO | None = None,
    max_body: int = MAX_BYTES,
    unix: str | None = None,
    every: int = ERRORS_ONLY,
) -> tuple[Service, asyncio.Server]:
    """Listen on host:port in the running loop (port 0 picks a free one), and on the Unix
    socket `unix` too when given (Service.unix_server), before the port: health checks go
    to the port, so a healthy instance is one that answers on both."""
    loop = asyncio.get_running_loop()
    kind = Service if node.config.batch is None else BatchingService
    service = kind(node, loop, access_log, max_body, every)
    if unix is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(unix)  # left by the previous run of this container
        socket_listener = Listener()
        service.unix_server = await loop.create_unix_server(
            lambda: Connection(service, socket_listener), unix, backlog=1024
        )
        os.chmod(unix, 0o666)  # the balancer may run as another user than the container
    port_listener = Listener()
    server = await loop.create_server(
        lambda: Connection(service, port_listener), host, port, backlog=1024
    )
    return service, server


def serve(
    config: NodeConfig | str | Path,
    host: str = "0.0.0.0",
    port: int = 8080,
    *,
    access_log: BinaryIO | None = None,
    codec: Codec | None = None,
    unix: str | None = None,
    every: int = ERRORS_ONLY,
) -> None:
    """Prepare the node and serve it until SIGTERM or SIGINT (a config may be a path).

    Raises ConfigError or PrepareError before listening when the node cannot be served,
    and OSError when the port cannot be bound. The access log defaults to standard output.
    """
    began = time.perf_counter()
    if not isinstance(config, NodeConfig):
        config = load_config(config)
    node = prepare(config, codec)
    log = access_log if access_log is not None else sys.stdout.buffer
    loop = new_event_loop()
    try:
        service, server = loop.run_until_complete(
            start(node, host, port, log, unix=unix, every=every)
        )
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, loop.stop)
        bound = server.sockets[0].getsockname()
        log.write(
            (
                f"pynode: serving {config.code_path} on {bound[0]}:{bound[1]}"
                f"{f' and {unix}' if unix else ''} "
                f"(inputs {names(config.inputs)}; outputs {names(config.outputs)}; "
                f"{_batching(config)}"
                f"{type(loop).__module__.split('.')[0]} loop) "
                f"ready in {(time.perf_counter() - began) * 1000:.0f} ms\n"
            ).encode()
        )
        service.flush()
        try:
            loop.run_forever()
        finally:
            server.close()
            if service.unix_server is not None:
                service.unix_server.close()
            service.close_connections()
            loop.run_until_complete(server.wait_closed())
            service.flush()
    finally:
        loop.close()


def _batching(config: NodeConfig) -> str:
    """The start-up line's word on batching: "" when the node is not batched."""
    batch = config.batch
    if batch is None:
        return ""
    arrays = ", numpy arrays" if batch.numpy else ""
    return f"batches of up to {batch.max_size}, {batch.max_delay * 1000:g} ms{arrays}; "


def access_every(value: str) -> int:
    """Service.every from the access log setting: errors, all, or N (one in N)."""
    text = value.strip().lower()
    if text == "errors":
        return ERRORS_ONLY
    if text == "all":
        return 1
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(
        f"{ACCESS_LOG_ENV}={value!r}: expected errors, all, or a number N ≥ 1 "
        "(log one successful request in N)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The container's command: serve the node the config describes; 1 when it cannot."""
    parser = argparse.ArgumentParser(
        prog="python3 -m gitops_nodes.pynode.server",
        description="Serve one python node: its code, checkpoint and variables over HTTP.",
    )
    parser.add_argument("--config", required=True, help="the node's JSON config file")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")
    parser.add_argument(
        "--unix",
        default=os.environ.get("GITOPS_NODES_SOCKET") or None,
        help="a Unix socket to serve on as well (default: $GITOPS_NODES_SOCKET)",
    )
    parser.add_argument(
        "--access-log",
        default=os.environ.get(ACCESS_LOG_ENV) or "errors",
        help="errors (default), all, or N: log one in N successful requests "
        f"(default: ${ACCESS_LOG_ENV})",
    )
    args = parser.parse_args(argv)
    try:
        every = access_every(args.access_log)
    except ValueError as exc:
        sys.stderr.write(f"pynode: {exc}\n")
        return 1
    try:
        serve(args.config, args.host, args.port, unix=args.unix, every=every)
    except PyNodeError as exc:
        sys.stderr.write(f"pynode: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"pynode: cannot listen on {args.host}:{args.port}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
