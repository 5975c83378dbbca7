"""Python nodes' ports are published on 127.0.0.1, where any local client reaches them, not
only the balancer: a request head is bounded in size (414, 431) and in time (408), so that
no client makes an instance hold without end what the parser gathers of it. Real HTTP over
loopback, the node served in a thread as in test_pynode_server.py."""

from __future__ import annotations

import re
import select
import socket

import pytest

from gitops_nodes.pynode import server
from gitops_nodes.pynode.server import MAX_HEAD
from tests.unit.test_pynode_server import (
    Served,
    post_step,
    split_response,
)

PIECE = 8192
CAP = 4 * 2**20  # bytes a test sends at most before it gives up waiting for an answer
REFUSED = re.compile(rb"HTTP/1\.1 4\d\d ")


def send_until_refused(port: int, first: bytes, piece: bytes) -> tuple[int, bytes]:
    """Send first, then piece after piece, reading what comes meanwhile, until a refusal
    (4xx) is read or CAP bytes went; how many bytes were sent, and everything read until the
    node closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(first)
        sent, raw = len(first), b""
        while sent < CAP and not REFUSED.search(raw):
            if select.select([sock], [], [], 0)[0]:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
                continue
            try:
                sock.sendall(piece)
            except OSError:
                break  # closed while we sent: what it answered is read below
            sent += len(piece)
        while chunk := sock.recv(65536):
            raw += chunk
        return sent, raw


def test_a_request_line_without_end_is_414_and_closed(counter: Served) -> None:
    sent, raw = send_until_refused(counter.port, b"POST /", b"a" * PIECE)

    status, headers, body = split_response(raw)
    assert status == 414 and headers["connection"] == "close"
    assert body["error_name"] == "URITooLong"
    assert f"longer than {MAX_HEAD} bytes" in body["error_message"]
    assert sent < CAP  # answered, not left reading
    assert counter.post({"step": 1}) == (200, {"count": 1, "total": 1})


def test_a_header_without_end_is_431_and_closed(counter: Served) -> None:
    first = b"POST / HTTP/1.1\r\nhost: x\r\nx-long: "
    sent, raw = send_until_refused(counter.port, first, b"b" * PIECE)

    status, headers, body = split_response(raw)
    assert status == 431 and headers["connection"] == "close"
    assert body["error_name"] == "RequestHeaderFieldsTooLarge"
    assert sent < CAP


def test_many_header_lines_past_the_limit_are_431(counter: Served) -> None:
    line = b"x-filler: " + b"c" * 90 + b"\r\n"
    sent, raw = send_until_refused(counter.port, b"POST / HTTP/1.1\r\n", line * 80)

    assert split_response(raw)[0] == 431
    assert sent < CAP


def test_a_head_near_the_limit_sent_in_pieces_is_served(counter: Served) -> None:
    request = post_step(3, *[b"x-filler-%d: %s" % (i, b"d" * 1000) for i in range(62)])
    assert MAX_HEAD - 4096 < request.index(b"\r\n\r\n") < MAX_HEAD
    with socket.create_connection(("127.0.0.1", counter.port), timeout=10) as sock:
        for start in range(0, len(request), 4096):
            sock.sendall(request[start : start + 4096])
        raw = sock.recv(65536)

    assert split_response(raw)[:1] == (200,)
    assert raw.endswith(b'{"count":3,"total":3}')


def test_a_whole_request_then_an_endless_head_answers_the_first_then_431(
    counter: Served,
) -> None:
    first = post_step(2) + b"POST / HTTP/1.1\r\nx-long: " + b"e" * (MAX_HEAD + 1000)
    _, raw = send_until_refused(counter.port, first, b"e" * PIECE)

    answers = raw.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"431"]
    assert b'{"count":2,"total":2}' in answers[0]


def test_a_head_left_unfinished_is_408_after_the_timeout(
    counter: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 0.3)
    with socket.create_connection(("127.0.0.1", counter.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\n")  # and nothing more
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)

    status, headers, body = split_response(b"".join(chunks))
    assert status == 408 and headers["connection"] == "close"
    assert body["error_name"] == "RequestTimeout"
    assert counter.post({"step": 1}) == (200, {"count": 1, "total": 1})


def test_a_connection_that_sends_whole_heads_slowly_is_never_timed_out(
    counter: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The timeout is for a head begun and left; a keep-alive connection idle between
    # requests (the balancer's pool) is not one.
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 0.3)
    with socket.create_connection(("127.0.0.1", counter.port), timeout=10) as sock:
        for step in (1, 2):
            sock.sendall(post_step(step))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            select.select([sock], [], [], 0.6)  # idle past the timeout: nothing may come
        sock.sendall(post_step(4))
        assert sock.recv(65536).endswith(b'{"count":7,"total":7}')


CHUNKED = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "begun",
    [b"1\r\n{\r\n0\r\nx-trailer: ", b"1;x-extension="],
    ids=["a trailer field", "a chunk extension"],
)
def test_a_chunked_body_with_framing_without_end_is_431_and_closed(
    counter: Served, begun: bytes
) -> None:
    sent, raw = send_until_refused(counter.port, CHUNKED + begun, b"f" * PIECE)

    status, headers, body = split_response(raw)
    assert status == 431 and headers["connection"] == "close"
    assert "framing and trailer fields" in body["error_message"]
    assert sent < CAP
    assert counter.post({"step": 1}) == (200, {"count": 1, "total": 1})


def test_a_body_of_many_small_chunks_sent_in_pieces_is_served(counter: Served) -> None:
    body = b'{"step": 5}' + b" " * 20_000
    framed = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))
    request = CHUNKED + framed + b"0\r\nx-trailer: fine\r\n\r\n"
    with socket.create_connection(("127.0.0.1", counter.port), timeout=10) as sock:
        for start in range(0, len(request), 1000):
            sock.sendall(request[start : start + 1000])
        raw = sock.recv(65536)

    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b'{"count":5,"total":5}')
