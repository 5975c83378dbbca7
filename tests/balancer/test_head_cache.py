"""Heads remembered by their bytes: a repeated request skips the parser and means the same.

Requests are written on raw sockets so that each test controls the bytes; whether the kernel
delivers them in one read or several, every answer must be the one the parser's path gives.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator

import pytest

from balancer import client
from balancer.head import HeadCache, read_head
from tests.balancer.conftest import HOST, BackendProcess, BalancerHarness, alias, node
from tests.balancer.test_proxying import read_response

GET = b"GET /aliases/w/info?q=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n"


@pytest.fixture
def two_nodes(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> tuple[BalancerHarness, BackendProcess, BackendProcess]:
    """Nodes a (instance a1) and b (b1); alias w routes to a."""
    a1, b1 = start_backend("a1"), start_backend("b1")
    balancer.publish({"a": node(a1), "b": node(b1)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy", "b1": "Healthy"})
    return balancer, a1, b1


@pytest.fixture
def sock(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> Iterator[socket.socket]:
    connection = socket.create_connection((HOST, two_nodes[0].port), timeout=10)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield connection
    finally:
        connection.close()


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """`count` content-length framed responses, however the reads split or join them."""
    data = b""
    found: list[tuple[int, bytes]] = []
    while len(found) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            end = head_end + 4 + length
            if len(data) >= end:
                found.append((int(head[9:12]), data[head_end + 4 : end]))
                data = data[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(found)} responses"
        data += chunk
    assert data == b""
    return found


def exchange(sock: socket.socket, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    sock.sendall(raw)
    return read_response(sock)


def test_a_repeated_head_is_remembered_and_answered_the_same(sock: socket.socket) -> None:
    first = exchange(sock, GET)
    assert client.HEADS.get(GET) is not None
    second = exchange(sock, GET)
    for status, headers, body in (first, second):
        assert status == 200 and headers["x-backend"] == "a1"
        seen = json.loads(body)
        assert (seen["method"], seen["path"], seen["query"]) == ("GET", "/info", "q=1")
        forwarded = [value for name, value in seen["headers"] if name.lower() == "x-forwarded-for"]
        assert forwarded == ["127.0.0.1"]  # the client is no trusted proxy: its own is dropped
    assert first[1]["x-request-id"] != second[1]["x-request-id"]  # made afresh each time


def test_a_body_that_came_with_a_remembered_head_is_forwarded(sock: socket.socket) -> None:
    for payload in (b"0123456789", b"abcdefghij", b"ABCDEFGHIJ"):
        raw = b"POST /aliases/w/echo HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n" + payload
        status, headers, body = exchange(sock, raw)
        assert (status, body, headers["x-echo-length"]) == (200, payload, "10")


def test_routing_is_not_remembered_a_new_table_applies(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess], sock: socket.socket
) -> None:
    balancer, a1, b1 = two_nodes
    assert exchange(sock, GET)[1]["x-backend"] == "a1"
    assert exchange(sock, GET)[1]["x-backend"] == "a1"
    balancer.publish({"a": node(a1), "b": node(b1)}, {"w": alias(("b", 1))})
    assert exchange(sock, GET)[1]["x-backend"] == "b1"


def test_pipelined_and_split_requests_after_a_remembered_head(sock: socket.socket) -> None:
    exchange(sock, GET)
    sock.sendall(GET + GET)  # two in one write: the parser's path, answered in order
    assert [status for status, _ in read_responses(sock, 2)] == [200, 200]
    sock.sendall(GET[:20])  # a head in two writes, then the remembered one again
    sock.sendall(GET[20:])
    status, _, body = read_response(sock)
    assert status == 200 and json.loads(body)["path"] == "/info"
    assert exchange(sock, GET)[0] == 200


def test_a_client_request_id_is_kept_and_its_head_not_remembered(sock: socket.socket) -> None:
    raw = b"GET /aliases/w/x HTTP/1.1\r\nHost: h\r\nX-Request-Id: mine-1\r\n\r\n"
    for _ in range(2):
        status, headers, _ = exchange(sock, raw)
        assert (status, headers["x-request-id"]) == (200, "mine-1")
    assert client.HEADS.get(raw) is None


def test_connection_close_is_remembered_with_the_head(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    raw = b"GET /aliases/w/ HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    for _ in range(2):
        with socket.create_connection((HOST, two_nodes[0].port), timeout=10) as sock:
            status, headers, _ = exchange(sock, raw)
            assert (status, headers.get("connection")) == (200, "close")
            assert sock.recv(1) == b""  # the balancer closed it


def test_the_cache_is_bounded_and_skips_what_must_not_be_reused() -> None:
    cache = HeadCache(limit=3, max_bytes=100)
    head = read_head(b"GET", b"/aliases/w/", "1.1", True, [(b"Host", b"h")])
    for n in range(5):
        cache.remember(b"raw%d" % n, head)
    assert len(cache.heads) <= 3
    cache.remember(b"x" * 101, head)
    assert cache.get(b"x" * 101) is None
    for headers in (
        [(b"Transfer-Encoding", b"chunked")],
        [(b"Expect", b"100-continue")],
        [(b"Content-Length", b"abc")],
        [(b"X-Request-Id", b"r")],
    ):
        assert not read_head(b"POST", b"/nodes/a/", "1.1", True, headers).rememberable
    assert not read_head(b"GET", b"/-/healthz", "1.1", True, []).rememberable
    assert read_head(b"GET", b"/x", "1.1", True, [(b"X-Node-Id", b"a")]).rememberable


def test_the_cache_keeps_only_heads_within_its_bounds_and_says_whose_limits_admit_them() -> None:
    cache = HeadCache(max_bytes=4096, max_headers=3)
    few = read_head(b"GET", b"/nodes/a/", "1.1", True, [(b"H%d" % i, b"v") for i in range(3)])
    many = read_head(b"GET", b"/nodes/a/", "1.1", True, [(b"H%d" % i, b"v") for i in range(4)])
    cache.remember(b"few", few)
    cache.remember(b"many", many)
    assert cache.get(b"few") is few and cache.get(b"many") is None
    # A connection may skip its limit checks on remembered heads only when every head the
    # cache may hold is within its limits.
    assert cache.admits(4096, 3) and cache.admits(32768, 100)
    assert not cache.admits(4095, 100) and not cache.admits(32768, 2)
