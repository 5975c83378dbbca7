"""What any client of a python node's published port can make its instance hold, besides a
request head (test_pynode_heads.py): a body that stops coming (408 after BODY_TIMEOUT), the
unfinished bodies of all connections together (503 past MAX_PENDING), pipelined requests of
one connection (429 past MAX_PIPELINED), answers nobody reads (cut after WRITE_TIMEOUT), open
connections per listening socket (503 past MAX_CONNECTIONS), a connection that never sends
anything (closed after HEAD_TIMEOUT). Real HTTP over loopback, the node served in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitops_nodes.pynode import server
from tests.resident import resident_bytes
from tests.unit.test_pynode_server import (
    Served,
    post_step,
    serving,
    split_response,
    write_counter,
    write_node,
)
from tests.waiting import wait_until

BODY = b'{"step": 1}'


def head(length: int) -> bytes:
    return b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % length


def padded(length: int) -> bytes:
    """A counter request's body (step 1) padded with spaces to length bytes."""
    return BODY + b" " * (length - len(BODY))


def read_to_close(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def connected(port: int) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        yield sock


def test_a_body_that_stops_coming_is_408_after_the_timeout(
    counter: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "BODY_TIMEOUT", 0.3)
    with connected(counter.port) as sock:
        sock.sendall(head(100) + BODY)  # and nothing more
        began = time.monotonic()
        raw = read_to_close(sock)

    status, headers, body = split_response(raw)
    assert status == 408 and headers["connection"] == "close"
    assert body["error_name"] == "RequestTimeout"
    assert "nothing of the request body came for 0.3 s" in body["error_message"]
    assert time.monotonic() - began < 5
    wait_until(lambda: counter.service.pending == 0, "the pending body bytes given back")
    assert counter.post({"step": 1}) == (200, {"count": 1, "total": 1})


def test_a_slow_body_that_keeps_coming_is_served(
    counter: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The timeout is for silence, not for the whole body: this one takes four timeouts.
    monkeypatch.setattr(server, "BODY_TIMEOUT", 0.4)
    data = padded(12)
    with connected(counter.port) as sock:
        sock.sendall(head(len(data)))
        for byte in range(len(data)):
            sock.sendall(data[byte : byte + 1])
            time.sleep(0.15)  # pacing the client, not waiting for the server
        raw = sock.recv(65536)

    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b'{"count":1,"total":1}')


def test_unfinished_bodies_past_the_budget_are_503_and_the_others_are_served(
    counter: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_PENDING", 2**20)
    size = 800 * 1024
    first = padded(size)
    with connected(counter.port) as a, connected(counter.port) as b:
        a.sendall(head(size) + first[: 600 * 1024])
        wait_until(lambda: counter.service.pending >= 590 * 1024, "the first body read")
        b.sendall(head(size) + b" " * (500 * 1024))  # together past 1 MiB
        status, headers, body = split_response(read_to_close(b))
        assert status == 503 and headers["connection"] == "close"
        assert body["error_name"] == "Busy"
        assert f"over {2**20} bytes together" in body["error_message"]

        a.sendall(first[600 * 1024 :])  # the first one, under the budget, goes on
        raw = a.recv(65536)
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b'{"count":1,"total":1}')

    assert counter.service.pending == 0  # each body's bytes were given back
    with connected(counter.port) as c:
        c.sendall(head(size) + first)
        assert c.recv(65536).endswith(b'{"count":2,"total":2}')


def test_a_body_refused_as_too_large_gives_its_bytes_back(counter: Served) -> None:
    chunked = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    piece = b"%x\r\n%s\r\n" % (2**20, b" " * 2**20)
    with connected(counter.port) as sock:
        sock.sendall(chunked)
        with contextlib.suppress(OSError):  # refused and closed while sending
            for _ in range(20):  # 20 MiB, past the 16 MB limit
                sock.sendall(piece)
        raw = read_to_close(sock)

    assert split_response(raw)[0] == 413
    wait_until(lambda: counter.service.pending == 0, "the pending body bytes given back")


def open_idle(port: int, count: int, stack: contextlib.ExitStack) -> list[socket.socket]:
    return [stack.enter_context(connected(port)) for _ in range(count)]


def test_connections_past_the_cap_get_503_and_the_unix_socket_is_counted_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 3)
    unix = tmp_path / "node.sock"
    with serving(write_counter(tmp_path), unix=unix) as served, contextlib.ExitStack() as stack:
        idle = open_idle(served.port, 3, stack)
        wait_until(lambda: len(served.service.connections) == 3, "3 connections accepted")
        with connected(served.port) as refused:
            status, headers, body = split_response(read_to_close(refused))
        assert status == 503 and headers["connection"] == "close"
        assert body["error_name"] == "TooManyConnections"
        assert "already serves 3 connections on this socket" in body["error_message"]

        # The balancer's socket has its own count: a flood of the port does not reach it.
        with socket.socket(socket.AF_UNIX) as through_socket:
            through_socket.settimeout(10)
            through_socket.connect(str(unix))
            through_socket.sendall(post_step(2))
            assert through_socket.recv(65536).startswith(b"HTTP/1.1 200 ")

        idle.pop().close()  # one leaves: a new one is served
        wait_until(lambda: len(served.service.connections) == 2, "one connection gone")
        with connected(served.port) as sock:
            sock.sendall(post_step(3))
            assert sock.recv(65536).endswith(b'{"count":5,"total":5}')


def test_a_connection_that_sends_nothing_is_closed_after_the_timeout(
    counter: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 0.3)
    with connected(counter.port) as sock:
        began = time.monotonic()
        assert sock.recv(65536) == b""  # closed, with no answer: there was no request

    assert time.monotonic() - began < 5
    wait_until(lambda: not counter.service.connections, "the connection forgotten")


def test_a_kept_alive_connection_between_requests_is_not_closed(
    counter: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither timeout is for a pooled connection between its requests.
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 0.2)
    monkeypatch.setattr(server, "BODY_TIMEOUT", 0.2)
    with connected(counter.port) as sock:
        sock.sendall(post_step(1))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:  # three timeouts' worth of idling
            sock.settimeout(deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                assert sock.recv(1) != b"", "the idle connection was closed"
        sock.settimeout(10)
        sock.sendall(post_step(2))
        assert sock.recv(65536).endswith(b'{"count":3,"total":3}')


def test_pipelined_requests_past_the_limit_get_429_after_the_answers_before(
    counter: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_PIPELINED", 3)
    with connected(counter.port) as sock:
        sock.sendall(b"".join(post_step(1) for _ in range(10)))  # one write: one read
        answers = read_to_close(sock).split(b"HTTP/1.1 ")[1:]

    assert [a[:3] for a in answers] == [b"200", b"200", b"200", b"429"]
    assert answers[2].endswith(b'{"count":3,"total":3}')
    _, headers, body = split_response(b"HTTP/1.1 " + answers[3])
    assert headers["connection"] == "close" and body["error_name"] == "TooManyRequests"
    assert counter.post({"step": 1}) == (200, {"count": 4, "total": 4})


def test_a_flood_of_pipelined_requests_nobody_reads_holds_little(counter: Served) -> None:
    # 60,000 tiny requests (2.9 MB) in one go: before the limit the instance ran them all in
    # one turn and held every answer meanwhile, 240 MB of them (orjson keeps 4 KiB each).
    flood = post_step(1) * 60_000
    before = resident_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], resident_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with connected(counter.port) as sock:
            with contextlib.suppress(OSError):  # refused and closed while sending
                sock.sendall(flood)
            with contextlib.suppress(OSError):
                read_to_close(sock)
    finally:
        done.set()
        sampler.join(5)
    assert max(peak[0], resident_bytes()) - before < 40 * 2**20
    assert counter.post({"step": 1})[0] == 200


BIG = 8 * 2**20  # bytes of the big node's one output: far more than the sockets' buffers


@pytest.fixture
def big(tmp_path: Path) -> Iterator[Served]:
    """A node answering an 8 MiB string."""
    path = write_node(tmp_path, f"text = 'x' * {BIG}\n", {}, {"text": "str"})
    with serving(path) as served:
        yield served


def ask_big(port: int, receive_buffer: int = 4096) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.sendall(b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}")
    return sock


def test_answers_nobody_reads_cut_the_connection_after_the_timeout(
    big: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "WRITE_TIMEOUT", 0.3)
    with ask_big(big.port) as sock:
        wait_until(lambda: len(big.service.connections) == 1, "the request read")
        # Not reading: the answer waits in the instance until the connection is cut.
        wait_until(lambda: not big.service.connections, "the stalled connection cut")
        # Reset, so the kernel stops offering what it held: reading now ends at once.
        began = time.monotonic()
        received = 0
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += len(chunk)
        assert time.monotonic() - began < 5
    assert received < BIG  # cut, not delivered


def test_a_slow_reader_that_keeps_reading_gets_its_whole_answer(
    big: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "WRITE_TIMEOUT", 1.0)
    received = 0
    with ask_big(big.port, receive_buffer=65536) as sock:
        began = time.monotonic()
        while chunk := sock.recv(65536):
            received += len(chunk)
            if received > BIG:
                break
            time.sleep(0.01)  # the client's pace (6.5 MB/s at most): slower than the writes
    assert received > BIG, "the answer was cut"
    assert time.monotonic() - began > 1.0  # longer than the timeout, draining all along
