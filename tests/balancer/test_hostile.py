"""Hostile and unusual clients against a real balancer over loopback, with real backends.

Huge and slow request heads, too many headers, idle connections and floods of them, garbage
and upgrades pipelined behind good requests, `Expect: 100-continue` on the balancer's own
answers, a malformed chunked upload, and instances that answer a 1xx as their last word.
Raw sockets, because well-behaved client libraries cannot send most of this.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from balancer.admin_http import ADMIN_ERRORS, REPEAT_LOGGED_EVERY, OncePerWindow
from balancer.http import MAX_RESPONSE_HEAD, REASONS
from balancer.proxy import ProxySettings
from balancer.table import AccessKey, AccessRule
from tests.balancer.conftest import HOST, BackendProcess, BalancerHarness, node
from tests.resident import resident_bytes
from tests.waiting import wait_until

KEY = "k" * 24


@dataclass
class Answer:
    """One response read off a raw socket."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_answers(data: bytes) -> list[Answer]:
    """The responses in data, in order (each framed by its content-length)."""
    answers = []
    while data:
        end = data.index(b"\r\n\r\n")
        lines = data[:end].decode("latin-1").split("\r\n")
        _, code, reason = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        answers.append(Answer(int(code), reason, headers, data[end + 4 : end + 4 + length]))
        data = data[end + 4 + length :]
    return answers


def read_to_eof(sock: socket.socket, within: float = 10.0) -> bytes:
    """Everything the balancer sends until it closes; fails after `within` seconds."""
    sock.settimeout(within)
    chunks: list[bytes] = []
    deadline = time.monotonic() + within
    while True:
        if time.monotonic() > deadline:
            raise AssertionError(f"the balancer did not close within {within:g}s: {chunks!r}")
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(
                f"the balancer did not close within {within:g}s: {chunks!r}"
            ) from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@contextlib.contextmanager
def connection(harness: BalancerHarness, admin: bool = False) -> Iterator[socket.socket]:
    """A raw connection to the balancer's data port (or its admin port)."""
    port = harness.admin_port if admin else harness.port
    sock = socket.create_connection((HOST, port), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def readable(sock: socket.socket) -> bool:
    """True when the balancer sent something (an answer, or its end of the stream)."""
    poller = select.poll()  # select() cannot take the descriptors of a flood
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def read_answer(sock: socket.socket) -> Answer:
    """One whole response (framed by its content-length) from a kept-alive connection."""
    sock.settimeout(10)
    data = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, f"the balancer closed after {data!r}"
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            [answer] = parse_answers(data[: end + 4])
            length = int(answer.headers.get("content-length", "0"))
            if len(data) >= end + 4 + length:
                [answer] = parse_answers(data)
                return answer


def is_closed(sock: socket.socket) -> bool:
    """True once the peer has closed (without consuming anything but an EOF)."""
    if not readable(sock):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def get(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def served(
    make_balancer: Callable[..., BalancerHarness],
    start_backend: Callable[..., BackendProcess],
) -> Callable[..., tuple[BalancerHarness, BackendProcess]]:
    """A balancer with the given settings serving node `a` (one backend)."""

    def make(**settings: Any) -> tuple[BalancerHarness, BackendProcess]:
        backend = start_backend("a1")
        harness = make_balancer(ProxySettings(**settings))
        harness.publish({"a": node(backend)})
        harness.wait_status({"a1": "Healthy"})
        return harness, backend

    return make


# -- request heads ------------------------------------------------------------------------


def flood_64_mib(harness: BalancerHarness, begun: bytes) -> tuple[Answer, int]:
    """Send begun, then 64 MiB of "a" in 64 KiB blocks (never ending what begun began), while
    reading what the balancer answers until it closes: its one answer, and how much this
    process (the balancer runs in it) grew meanwhile at most."""
    data, growth = flood_64_mib_raw(harness, begun)
    [answer] = parse_answers(data)
    return answer, growth


def flood_64_mib_raw(
    harness: BalancerHarness, begun: bytes, admin: bool = False
) -> tuple[bytes, int]:
    """flood_64_mib to the data port or the admin port: what was read before the balancer
    closed (or reset) the connection, and the growth."""
    block = b"a" * 65536
    before = resident_bytes()
    peak = [before]

    def flood(sock: socket.socket) -> None:
        try:
            sock.sendall(begun)
            for sent in range(1, 1025):
                sock.sendall(block)
                if sent % 64 == 0:
                    peak[0] = max(peak[0], resident_bytes())
        except OSError:
            pass  # the balancer may close before all of it is sent

    with connection(harness, admin) as sock:
        sender = threading.Thread(target=flood, args=(sock,), daemon=True)
        sender.start()
        try:
            data = read_to_eof(sock, within=60)
        except ConnectionResetError:  # closed with our bytes unread: the answer may be lost
            data = b""
        sender.join(60)
    return data, max(peak[0], resident_bytes()) - before


def test_a_64_mib_header_line_is_refused_431_without_being_buffered(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, backend = served()
    answer, growth = flood_64_mib(harness, b"GET /nodes/a/huge HTTP/1.1\r\nHost: test\r\nX-Big: ")
    assert (answer.status, answer.reason) == (431, "Request Header Fields Too Large")
    assert answer.headers["connection"] == "close"
    assert answer.json()["error_name"] == "RequestHeaderFieldsTooLarge"
    assert "x-backend" not in answer.headers  # the balancer's own answer
    assert "/huge" not in backend.counts()  # nothing was forwarded
    # The balancer runs in this process: its growth while the 64 MiB came is bounded by the
    # head limit and a few socket reads, far below what the head would have taken.
    assert growth < 24 * 2**20, growth


@pytest.mark.parametrize(
    "begun",
    [b"1\r\nx\r\n0\r\nX-Trailer: ", b"1;x-extension="],
    ids=["a trailer field", "a chunk extension"],
)
def test_chunk_framing_without_end_is_refused_431_without_being_buffered(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]], begun: bytes
) -> None:
    # After the head, httptools gathers a trailer field whole before handing it over: a
    # chunked body's bytes that bring no body are bounded like a head.
    harness, _backend = served()
    answer, growth = flood_64_mib(
        harness,
        b"POST /nodes/a/echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n" + begun,
    )
    assert (answer.status, answer.reason) == (431, "Request Header Fields Too Large")
    assert answer.headers["connection"] == "close"
    assert "framing and trailer fields" in answer.json()["error"]
    assert growth < 24 * 2**20, growth
    wait_until(lambda: harness.inflight() == 0, "the aborted upload to be released", 5.0)
    assert harness.get("/nodes/a/x").status == 200


def test_a_body_of_many_small_chunks_with_trailers_is_forwarded_whole(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, _backend = served()
    body = bytes(range(256)) * 80  # 20 KiB, one byte a chunk
    framed = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))
    request = (
        b"POST /nodes/a/echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + framed
        + b"0\r\nX-Trailer: fine\r\n\r\n"
    )
    with connection(harness) as sock:
        for start in range(0, len(request), 1000):
            sock.sendall(request[start : start + 1000])
        answer = read_answer(sock)
    assert answer.status == 200
    assert answer.body == body


def test_an_over_long_request_line_is_refused_414(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, backend = served(max_head=4096)
    with connection(harness) as sock:
        sock.sendall(get("/nodes/a/" + "x" * 5000))
        [answer] = parse_answers(read_to_eof(sock))
    assert (answer.status, answer.reason) == (414, "URI Too Long")
    assert "4096 byte limit" in answer.json()["error"]
    with connection(harness) as sock:  # the same limit, reached by a header in a slow head
        sock.sendall(b"GET /nodes/a/ok HTTP/1.1\r\nHost: test\r\n")
        time.sleep(0.2)
        sock.sendall(b"X-Pad: " + b"p" * 3000 + b"\r\n")
        time.sleep(0.2)
        sock.sendall(b"X-More: " + b"m" * 3000 + b"\r\n\r\n")
        [answer] = parse_answers(read_to_eof(sock))
    assert answer.status == 431
    assert backend.counts().get("/ok") is None


def test_a_head_just_under_the_limit_is_served_in_pieces(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, _backend = served(max_head=4096)
    head = get("/nodes/a/fits", "X-Pad: " + "p" * 3900)
    assert len(head) <= 4096
    with connection(harness) as sock:
        for start in range(0, len(head), 1000):  # the blank line may straddle two reads
            sock.sendall(head[start : start + 1000])
            time.sleep(0.05)
        sock.sendall(get("/nodes/a/fits", "Connection: close"))
        answers = parse_answers(read_to_eof(sock))
    assert [a.status for a in answers] == [200, 200]


def test_more_headers_than_the_limit_are_refused_431(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, backend = served(max_headers=20)
    fine = [f"X-H{i}: v" for i in range(18)]  # with Host and Connection: 20, the limit
    with connection(harness) as sock:
        sock.sendall(get("/nodes/a/fine", *fine, "Connection: close"))
        [answer] = parse_answers(read_to_eof(sock))
    assert answer.status == 200
    with connection(harness) as sock:
        sock.sendall(get("/nodes/a/many", *fine, "X-Twenty: v", "X-One-Too-Many: v"))
        [answer] = parse_answers(read_to_eof(sock))
    assert answer.status == 431 and "more than 20 header lines" in answer.json()["error"]
    assert backend.counts().get("/many") is None


def test_a_head_sent_one_byte_at_a_time_gets_408_and_is_closed(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, backend = served(header_timeout=1.0)
    head = get("/nodes/a/slow-head")
    with connection(harness) as sock:
        started = time.monotonic()
        data = b""
        for byte in head:
            sock.sendall(bytes([byte]))
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if poller.poll(300):
                data = read_to_eof(sock)
                break
        assert data, "the balancer let a head take longer than the whole drip"
    [answer] = parse_answers(data)
    assert (answer.status, answer.reason) == (408, "Request Timeout")
    assert answer.headers["connection"] == "close"
    assert time.monotonic() - started < 8  # 1 s, and up to a sweep late
    assert backend.counts().get("/slow-head") is None


def test_idle_connections_close_after_their_timeouts(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> None:
    backend = start_backend("a1")
    harness = make_balancer(ProxySettings(header_timeout=1.0, idle_timeout=60.0))
    harness.publish({"a": node(backend)})
    harness.wait_status({"a1": "Healthy"})
    with connection(harness) as silent, connection(harness) as used:
        used.sendall(get("/nodes/a/x"))
        assert read_answer(used).status == 200
        # A connection that never sent a request gets the header timeout...
        wait_until(lambda: is_closed(silent), "the silent connection to close", 10.0)
        # ... one that was served waits for its next request up to the idle timeout.
        assert not is_closed(used)
        used.sendall(get("/nodes/a/x"))
        assert read_answer(used).status == 200

    short = make_balancer(ProxySettings(idle_timeout=1.0))
    short.publish({"a": node(backend)})
    short.wait_status({"a1": "Healthy"})
    with connection(short) as kept:
        kept.sendall(get("/nodes/a/x"))
        assert read_answer(kept).status == 200
        wait_until(lambda: is_closed(kept), "the idle keep-alive connection to close", 10.0)


def test_an_idle_flood_past_max_clients_is_answered_503_and_closed(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    limit, flood = 300, 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * flood + 512:  # the test's sockets and the balancer's share this process
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * flood + 512), hard))
    harness, _backend = served(max_clients=limit, header_timeout=60.0)
    status = harness.status()
    assert status["limits"]["maxClients"] == limit
    sockets: list[socket.socket] = []
    try:
        for _ in range(flood):
            sockets.append(socket.create_connection((HOST, harness.port), timeout=10))

        def turned_away() -> list[socket.socket]:
            return [s for s in sockets if readable(s)]

        wait_until(
            lambda: len(turned_away()) == flood - limit,
            f"{flood - limit} connections past the limit to be turned away",
            30.0,
        )
        assert harness.call(lambda: len(harness.balancer.proxy.clients)) == limit
        refused = turned_away()[0]
        [answer] = parse_answers(read_to_eof(refused))
        assert (answer.status, answer.reason) == (503, "Service Unavailable")
        assert "300 client connections per worker" in answer.json()["error"]
        assert answer.headers["connection"] == "close"
        # A client that sends its request before reading still gets the 503, not a reset.
        with connection(harness) as eager:
            eager.sendall(get("/nodes/a/x"))
            [answer] = parse_answers(read_to_eof(eager))
        assert answer.status == 503
        # The connections within the limit are served, and a freed slot takes a new one.
        kept = [s for s in sockets if not readable(s)]
        assert len(kept) == limit
        kept[0].sendall(get("/nodes/a/x"))
        assert read_answer(kept[0]).status == 200
        for sock in kept[1:11]:
            sock.close()
        wait_until(
            lambda: harness.call(lambda: len(harness.balancer.proxy.clients)) <= limit - 10,
            "the balancer to see ten connections closed",
            10.0,
        )
        assert harness.get("/nodes/a/x").status == 200
    finally:
        for sock in sockets:
            sock.close()


def test_status_shows_the_limits(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, _ = served(max_head=8192, max_headers=50, header_timeout=3.0, max_clients=77)
    assert harness.status()["limits"] == {
        "maxHeadBytes": 8192,
        "maxHeaders": 50,
        "maxBodyBytes": ProxySettings().max_body,
        "headerTimeoutSeconds": 3.0,
        "idleTimeoutSeconds": 60.0,
        "maxClients": 77,
    }


# -- request lines and framing ----------------------------------------------------------


def test_an_absolute_form_target_is_routed_by_its_path(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    # RFC 9112 3.2.2: a server must accept it; clients set to use a proxy send it.
    harness, _ = served()
    with connection(harness) as sock:
        sock.sendall(b"GET http://gateway:8080/nodes/a/abs?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
        answer = read_answer(sock)
        sock.sendall(b"GET HTTP://gateway HTTP/1.1\r\nHost: other\r\n\r\n")
        unrouted = read_answer(sock)
        sock.sendall(b"GET http://me:secret@gw/nodes/a/u HTTP/1.1\r\nHost: other\r\n\r\n")
        with_user = read_answer(sock)
    assert (answer.status, answer.headers["x-backend"]) == (200, "a1")
    assert (answer.json()["path"], answer.json()["query"]) == ("/abs", "q=1")
    seen = {name.lower(): value for name, value in answer.json()["headers"]}
    assert seen["x-forwarded-host"] == "gateway:8080"  # the target's authority, not Host
    assert unrouted.status == 404 and "x-backend" not in unrouted.headers
    assert (with_user.status, with_user.json()["path"]) == (200, "/u")
    assert "secret" not in json.dumps(with_user.json()["headers"])


@pytest.mark.parametrize(
    ("head", "status", "words"),
    [
        (b"POST /nodes/a/v HTTP/2.0\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}", 505, "HTTP/2.0"),
        (
            b"POST /nodes/a/te HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\n\r\n",
            501,
            "transfer coding 'gzip' is not supported",
        ),
        (
            b"POST /nodes/a/te HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: br\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            501,
            "transfer coding 'br' is not supported",
        ),
        # RFC 9112 6.3: without chunked last, the body's length cannot be known: 400.
        (
            b"POST /nodes/a/te HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n{}",
            400,
            "Transfer-Encoding",
        ),
        # HTTP/0.9: a request line alone, no version and no head to wait for (was held
        # until the header timeout); answered at once, empty lines before it allowed.
        (b"GET /nodes/a/v\r\n", 505, "without an HTTP version (HTTP/0.9)"),
        (b"\r\nGET /nodes/a/v\n", 505, "without an HTTP version (HTTP/0.9)"),
    ],
    ids=[
        "HTTP/2.0 request line",
        "gzip, chunked",
        "br, then chunked",
        "gzip alone",
        "HTTP/0.9",
        "HTTP/0.9 after an empty line",
    ],
)
def test_a_version_or_transfer_coding_it_cannot_pass_on_is_refused_not_forwarded(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
    head: bytes,
    status: int,
    words: str,
) -> None:
    # The body goes upstream re-framed: forwarded, a gzip-coded body would read as plain.
    harness, backend = served()
    with connection(harness) as sock:
        sock.sendall(head)
        [answer] = parse_answers(read_to_eof(sock))
    assert (answer.status, answer.headers["connection"]) == (status, "close")
    assert words in answer.json()["error"]
    assert "/v" not in backend.counts() and "/te" not in backend.counts()
    assert harness.get("/nodes/a/after").status == 200


# -- the admin port -----------------------------------------------------------------------
# It runs in the data plane's process (uvicorn, balancer/admin_http.py): what it would hold,
# the data plane would lose.


@pytest.mark.parametrize(
    "begun",
    [b"GET /-/status HTTP/1.1\r\nHost: test\r\nX-Big: ", b"GET /-/"],
    ids=["a header line", "a request line"],
)
def test_a_64_mib_head_on_the_admin_port_is_refused_without_being_buffered(
    make_balancer: Callable[..., BalancerHarness], begun: bytes
) -> None:
    harness = make_balancer()
    data, growth = flood_64_mib_raw(harness, begun, admin=True)
    # uvicorn answers 400 and closes at once, so the answer may be lost to the reset that
    # closing with unread bytes sends; closed it is, in any case (read_to_eof).
    if data:
        [answer] = parse_answers(data)
        assert answer.status == 400 and answer.headers["connection"] == "close"
        assert "its head is over the size limit" in answer.json()["error"]
    assert growth < 24 * 2**20, growth  # before: 113 MiB for one 64 MiB header
    assert harness.admin("GET", "/-/healthz").status == 200


def test_a_malformed_request_on_the_admin_port_is_answered_400_in_json(
    make_balancer: Callable[..., BalancerHarness],
) -> None:
    harness = make_balancer()
    with connection(harness, admin=True) as sock:
        sock.sendall(b"GET /-/status HTTP/1.1\r\nnot a header line\r\n\r\n")
        [answer] = parse_answers(read_to_eof(sock))
    assert (answer.status, answer.headers["content-type"]) == (400, "application/json")
    assert answer.json() == {
        "error": "invalid HTTP request: malformed, or its head is over the size limit"
    }


def test_the_admin_port_logs_what_a_client_can_repeat_once_a_minute_with_a_count(
    make_balancer: Callable[..., BalancerHarness],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = OncePerWindow(REPEAT_LOGGED_EVERY)  # its own: the module's is the process's
    monkeypatch.setattr(ADMIN_ERRORS, "filters", [window])
    harness = make_balancer()
    invalid = "Invalid HTTP request received."

    def send(request: bytes) -> None:
        with connection(harness, admin=True) as sock:
            sock.sendall(request)
            assert parse_answers(read_to_eof(sock))[0].status == 400

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == ADMIN_ERRORS.name]

    with caplog.at_level(logging.WARNING, logger=ADMIN_ERRORS.name):
        for _ in range(20):
            send(b"GET /-/status HTTP/1.1\r\nnot a header line\r\n\r\n")
        assert logged() == [invalid]
        window.logged_at[invalid] -= REPEAT_LOGGED_EVERY  # a minute on
        send(b"\x16\x03\x01 TLS, say\r\n\r\n")
        wait_until(lambda: len(logged()) == 2, "the count to be logged", 5.0)
    assert logged()[1].startswith(f"{invalid} (19 more like it in the last 6")
    assert harness.admin("GET", "/-/healthz").status == 200


def test_the_admin_port_closes_a_connection_without_a_whole_head_in_the_header_timeout(
    make_balancer: Callable[..., BalancerHarness],
) -> None:
    harness = make_balancer(ProxySettings(header_timeout=1.0))
    with connection(harness, admin=True) as silent, connection(harness, admin=True) as drip:
        started = time.monotonic()
        for byte in get("/-/healthz", "X-Filler: " + "f" * 100):  # 8 s of one byte a 60 ms
            drip.sendall(bytes([byte]))
            if readable(drip):
                break
            time.sleep(0.06)  # the client's pace, not a wait for the server
        assert read_to_eof(drip) == b""  # closed with no answer: no request came whole
        assert time.monotonic() - started < 5
        wait_until(lambda: is_closed(silent), "the silent connection to close", 10.0)
    assert harness.admin("GET", "/-/healthz").status == 200


def test_the_admin_port_answers_503_past_its_connection_limit(
    make_balancer: Callable[..., BalancerHarness], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("balancer.server.ADMIN_MAX_CONNECTIONS", 5)
    harness = make_balancer(ProxySettings(header_timeout=60.0))
    with contextlib.ExitStack() as stack:
        for _ in range(5):
            stack.enter_context(connection(harness, admin=True))

        def admin_connections() -> int:
            admin = harness.balancer._admin
            assert admin is not None
            return len(admin.server_state.connections)

        wait_until(lambda: harness.call(admin_connections) == 5, "5 idle admin connections")
        with connection(harness, admin=True) as sock:
            sock.sendall(get("/-/healthz"))
            assert read_answer(sock).status == 503
        assert harness.get("/-/healthz").status != 503  # the data port is not limited
    wait_until(lambda: harness.call(admin_connections) == 0, "the idle ones gone")
    assert harness.admin("GET", "/-/healthz").status == 200


# -- pipelining ---------------------------------------------------------------------------


def test_garbage_pipelined_in_one_write_is_refused_after_the_good_request(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, _ = served()
    with connection(harness) as sock:
        sock.sendall(get("/nodes/a/slow?ms=300") + b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        first, refusal = parse_answers(read_to_eof(sock))
    assert (first.status, first.headers["x-backend"]) == (200, "a1")
    assert first.json()["path"] == "/slow"
    assert (refusal.status, refusal.reason) == (400, "Bad Request")
    assert refusal.headers["connection"] == "close"
    assert refusal.json()["requestId"] == refusal.headers["x-request-id"] != "-"


def test_garbage_pipelined_in_a_later_write_is_refused_after_the_good_request(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, _ = served()
    with connection(harness) as sock:
        sock.sendall(get("/nodes/a/slow?ms=1000"))
        time.sleep(0.3)  # the first request is at the instance now
        sock.sendall(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        first, refusal = parse_answers(read_to_eof(sock))
    assert (first.status, first.json()["path"]) == (200, "/slow")
    assert refusal.status == 400


def test_an_upgrade_pipelined_second_is_refused_501_after_the_first_answer(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, backend = served()
    upgrade = get("/nodes/a/ws", "Upgrade: websocket", "Connection: Upgrade")
    with connection(harness) as sock:
        sock.sendall(get("/nodes/a/first") + upgrade + get("/nodes/a/never"))
        first, refusal = parse_answers(read_to_eof(sock))
    assert (first.status, first.json()["path"]) == (200, "/first")
    assert (refusal.status, refusal.reason) == (501, "Not Implemented")
    assert refusal.headers["connection"] == "close"
    counts = backend.counts()
    assert "/ws" not in counts and "/never" not in counts


def test_a_read_of_many_tiny_pipelined_requests_is_cut_at_the_pipelining_limit(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, backend = served()
    with connection(harness) as sock:
        sock.sendall(get("/nodes/a/slow?ms=200") + get("/nodes/a/tiny") * 150)
        answers = parse_answers(read_to_eof(sock, within=30))
    # The one being answered, the 100 waiting behind it, then the refusal; nothing after.
    assert [a.status for a in answers] == [200] * 101 + [429]
    assert answers[-1].headers["connection"] == "close"
    assert backend.counts()["/tiny"] == 100


# -- Expect: 100-continue -----------------------------------------------------------------


def expect_head(path: str, *extra: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n"
        "Expect: 100-continue\r\n" + "".join(f"{line}\r\n" for line in extra) + "\r\n"
    ).encode()


def test_expect_continue_gets_the_balancers_own_answer_at_once(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, backend = served()
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    private = node(backend, access=AccessRule((AccessKey("ci", digest),), ("folder-1",)))
    harness.publish({"a": node(backend), "p": private})
    harness.wait_status({"a1": "Healthy"})
    for path, extra, status in (
        ("/nodes/nope/x", (), 404),
        ("/aliases/nope/x", (), 404),
        ("/nodes/p/x", (), 401),
        ("/nodes/p/x", ("Authorization: Bearer wrong-key-wrong-key-1",), 401),
        ("/nodes/p/x", (f"Authorization: Bearer {KEY}", "x-folder-id: folder-2"), 403),
        ("/datasphere/v1/nodes/nope:execute", (), 404),
    ):
        with connection(harness) as sock:
            sock.sendall(expect_head(path, *extra))
            [answer] = parse_answers(read_to_eof(sock, within=5))  # no body was sent
        assert answer.status == status, (path, answer)
        assert answer.headers["connection"] == "close"
    with connection(harness) as sock:  # a body over the limit: 413, also at once
        sock.sendall(
            b"POST /nodes/a/x HTTP/1.1\r\nHost: test\r\nContent-Length: 99999999999\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        [answer] = parse_answers(read_to_eof(sock, within=5))
    assert answer.status == 413
    with connection(harness) as sock:  # a request that goes on: 100 Continue, then its answer
        sock.sendall(expect_head("/nodes/a/echo").replace(b"1000000", b"5"))
        sock.settimeout(10)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        assert b"x-echo-length: 5" in sock.recv(65536)


# -- broken bodies and broken instances ----------------------------------------------------


def test_a_bad_chunk_size_mid_upload_is_answered_400(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, _backend = served()
    with connection(harness) as sock:
        sock.sendall(
            b"POST /nodes/a/echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n"
        )
        time.sleep(0.3)  # the upload is under way to the instance
        sock.sendall(b"zz\r\nnot a chunk\r\n")
        [answer] = parse_answers(read_to_eof(sock))
    assert (answer.status, answer.reason) == (400, "Bad Request")
    assert "chunk" in answer.json()["error"]
    assert answer.headers["connection"] == "close"
    wait_until(lambda: harness.inflight() == 0, "the aborted upload to be released", 5.0)
    assert harness.get("/nodes/a/x").status == 200


@pytest.mark.parametrize("code", [103, 101])
def test_a_1xx_as_the_final_answer_is_502_and_ejects_the_instance(
    make_balancer: Callable[..., BalancerHarness],
    start_backend: Callable[..., BackendProcess],
    code: int,
) -> None:
    backend = start_backend("a1")
    harness = make_balancer()
    # Checks far apart: the ejection stays visible until the next one readmits it.
    harness.publish({"a": node(backend, interval=60.0)})
    harness.wait_status({"a1": "Healthy"})
    reply = harness.get(f"/nodes/a/status?code={code}")
    assert reply.status == 502
    instance = harness.instances()["a1"]
    assert instance["status"] == "Unhealthy"
    assert "a1" in instance["lastError"]
    assert harness.get("/nodes/a/x").status == 503  # out of balancing


def test_a_response_head_without_end_is_502_at_once_and_not_held(
    make_balancer: Callable[..., BalancerHarness],
    start_backend: Callable[..., BackendProcess],
) -> None:
    # The balancer holds an instance's head whole before it rewrites and forwards it: one
    # whose head never ends is cut off at the limit, not held until the request timeout.
    backend = start_backend("a1")
    harness = make_balancer()
    harness.publish({"a": node(backend, interval=60.0)})
    harness.wait_status({"a1": "Healthy"})
    before = resident_bytes()
    started = time.monotonic()
    reply = harness.get("/nodes/a/endless?part=head&mb=256")
    took = time.monotonic() - started
    assert reply.status == 502
    assert f"sent a response head over {MAX_RESPONSE_HEAD} bytes" in reply.json()["error"]
    assert took < 10, took  # the node's request timeout is 15 s
    assert resident_bytes() - before < 24 * 2**20
    instance = harness.instances()["a1"]
    assert instance["status"] == "Unhealthy" and "response head" in instance["lastError"]


# -- status lines -------------------------------------------------------------------------


def test_the_data_ports_healthz_says_200_ok(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, _ = served()
    with connection(harness) as sock:
        sock.sendall(get("/-/healthz", "Connection: close"))
        data = read_to_eof(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")


def test_every_local_answer_has_its_own_reason_phrase(
    served: Callable[..., tuple[BalancerHarness, BackendProcess]],
) -> None:
    harness, _ = served()
    for code, phrase in REASONS.items():
        assert phrase.decode() in _RFC_PHRASES[code], code
    with connection(harness) as sock:
        sock.sendall(get("/nodes/nope/x") + get("/nowhere") + get("/-/healthz"))
        sock.sendall(b"POST /nodes/a/x HTTP/1.1\r\nContent-Length: x\r\n\r\n")
        answers = parse_answers(read_to_eof(sock))
    assert [(a.status, a.reason) for a in answers] == [
        (404, "Not Found"),
        (404, "Not Found"),
        (200, "OK"),
        (400, "Bad Request"),
    ]


# RFC 9110's phrases (and RFC 6585's for 431); 413 and 422 also by their RFC 7231 names.
_RFC_PHRASES = {
    200: {"OK"},
    400: {"Bad Request"},
    401: {"Unauthorized"},
    403: {"Forbidden"},
    404: {"Not Found"},
    405: {"Method Not Allowed"},
    408: {"Request Timeout"},
    413: {"Content Too Large", "Payload Too Large"},
    414: {"URI Too Long"},
    422: {"Unprocessable Content", "Unprocessable Entity"},
    429: {"Too Many Requests"},
    431: {"Request Header Fields Too Large"},
    500: {"Internal Server Error"},
    501: {"Not Implemented"},
    502: {"Bad Gateway"},
    503: {"Service Unavailable"},
    504: {"Gateway Timeout"},
    505: {"HTTP Version Not Supported"},
}
