"""Proxying: retries only where safe, 502, 504 and 413, chunked bodies both ways, HEAD, a
20 MB streamed response, client disconnects, hop-by-hop and forwarding headers."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from balancer.proxy import ProxySettings
from tests.balancer.backend import CHUNKS, MIB, big_block
from tests.balancer.conftest import HOST, BackendProcess, BalancerHarness, alias, node, send
from tests.waiting import wait_until


@pytest.fixture
def one_node(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> tuple[BalancerHarness, BackendProcess]:
    """balancer serving node a (instance a1) behind alias w."""
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy"})
    return balancer, a1


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """A response with a content-length body (or none), read from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_post_that_reached_the_upstream_is_not_retried(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, a2 = start_backend("a1"), start_backend("a2")
    balancer.publish({"a": node(a1, a2)})
    balancer.wait_status({"a1": "Healthy", "a2": "Healthy"})
    conn = balancer.connect()
    try:
        for _ in range(4):  # pooled connections to both instances
            assert send(conn, "GET", "/nodes/a/warm").status == 200
        reply = send(conn, "POST", "/nodes/a/close", body=b"x" * 1000)
    finally:
        conn.close()
    assert reply.status == 502, reply.body
    assert reply.header("content-type") == "application/json"
    document = reply.json()
    assert document["status"] == 502 and document["node"] == "a"
    closes = a1.counts().get("/close", 0) + a2.counts().get("/close", 0)
    assert closes == 1
    # The instance that hung up is still served and serving.
    assert balancer.get("/nodes/a/after").status == 200


def test_read_timeout_gives_504_json(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> None:
    balancer = make_balancer(ProxySettings(read_timeout=0.3))
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy"})
    began = time.monotonic()
    reply = balancer.get("/aliases/w/slow?ms=2000")
    elapsed = time.monotonic() - began
    assert reply.status == 504, reply.body
    assert elapsed < 1.9, elapsed
    document = reply.json()
    assert document["status"] == 504 and document["node"] == "a"
    wait_until(lambda: balancer.inflight() == 0, "in-flight count back to 0")
    assert balancer.get("/aliases/w/quick").status == 200


def test_413_for_a_declared_length_over_16_mb_before_the_body(
    one_node: tuple[BalancerHarness, BackendProcess],
) -> None:
    balancer, a1 = one_node
    with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
        sock.sendall(
            b"POST /aliases/w/echo HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % (16 * MIB + 1)
        )
        code, headers, body = read_response(sock)  # no body byte was sent
    assert code == 413
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == 413
    assert a1.counts().get("/echo", 0) == 0


def test_413_for_a_chunked_body_over_the_limit(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> None:
    balancer = make_balancer(ProxySettings(max_body=64 * 1024))
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)})
    balancer.wait_status({"a1": "Healthy"})
    chunk = b"y" * 16384
    with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
        sock.sendall(
            b"POST /nodes/a/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(5):  # 80 KiB, over the 64 KiB limit, and never a last chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        code, _, body = read_response(sock)
    assert code == 413 and json.loads(body)["status"] == 413
    wait_until(lambda: balancer.inflight() == 0, "in-flight count back to 0")
    assert balancer.get("/nodes/a/after").status == 200


def test_chunked_request_body_is_echoed_intact(
    one_node: tuple[BalancerHarness, BackendProcess],
) -> None:
    balancer, _ = one_node
    parts = [os.urandom(1000 + 997 * i) for i in range(40)]
    reply = balancer.request("POST", "/aliases/w/echo", body=iter(parts))
    assert reply.status == 200
    expected = b"".join(parts)
    assert reply.header("x-received-te") == "chunked"
    assert reply.header("x-echo-length") == str(len(expected))
    assert reply.body == expected


def test_a_16_mb_request_body_at_the_limit_is_echoed_intact(
    one_node: tuple[BalancerHarness, BackendProcess],
) -> None:
    balancer, _ = one_node
    payload = os.urandom(16 * MIB)
    reply = balancer.request("PUT", "/aliases/w/echo", body=payload)
    assert reply.status == 200
    assert reply.header("x-received-length") == str(len(payload))
    assert reply.body == payload


def test_chunked_response_is_passed_through(
    one_node: tuple[BalancerHarness, BackendProcess],
) -> None:
    balancer, _ = one_node
    conn = balancer.connect()
    try:
        for _ in range(2):  # and the connection stays usable after it
            reply = send(conn, "GET", "/aliases/w/chunked")
            assert reply.status == 200
            assert reply.header("transfer-encoding") == "chunked"
            assert reply.body == b"".join(CHUNKS)
    finally:
        conn.close()


def test_head_has_headers_and_no_body(one_node: tuple[BalancerHarness, BackendProcess]) -> None:
    balancer, _ = one_node
    conn = balancer.connect()
    try:
        for path, length in (
            ("/aliases/w/thing", None),
            ("/aliases/w/big?mb=20", str(20 * MIB)),
            ("/aliases/w/chunked", None),
        ):
            reply = send(conn, "HEAD", path)
            assert reply.status == 200 and reply.body == b""
            assert reply.header("x-backend") == "a1"
            if length is not None:
                assert reply.header("content-length") == length
            after = send(conn, "GET", "/aliases/w/after")  # framing intact on the connection
            assert after.status == 200 and after.json()["path"] == "/after"
    finally:
        conn.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_20_mb_streamed_response_arrives_intact(
    one_node: tuple[BalancerHarness, BackendProcess], chunked: bool
) -> None:
    balancer, _ = one_node
    expected = hashlib.sha256()
    for index in range(20):
        expected.update(big_block(index))
    conn = balancer.connect(timeout=30)
    try:
        conn.request("GET", f"/aliases/w/big?mb=20&chunked={int(chunked)}")
        response = conn.getresponse()
        assert response.status == 200
        received = hashlib.sha256()
        size = 0
        while chunk := response.read(256 * 1024):
            received.update(chunk)
            size += len(chunk)
    finally:
        conn.close()
    assert size == 20 * MIB
    assert received.hexdigest() == expected.hexdigest()


def test_client_disconnect_mid_response_does_not_hurt_the_balancer(
    one_node: tuple[BalancerHarness, BackendProcess],
) -> None:
    balancer, _ = one_node
    for _ in range(3):
        with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
            sock.sendall(b"GET /aliases/w/big?mb=200 HTTP/1.1\r\nHost: x\r\n\r\n")
            received = 0
            while received < 512 * 1024:
                chunk = sock.recv(65536)
                assert chunk
                received += len(chunk)
        # the socket is closed with most of the 200 MB unread
    wait_until(lambda: balancer.inflight() == 0, "in-flight count back to 0")
    assert balancer.call(balancer.balancer.proxy.inflight) == 0
    assert balancer.get("/aliases/w/after").status == 200


def test_client_disconnect_while_waiting_aborts_the_upstream_request(
    one_node: tuple[BalancerHarness, BackendProcess],
) -> None:
    balancer, _ = one_node
    with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
        sock.sendall(b"GET /aliases/w/slow?ms=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: balancer.inflight() == 1, "the slow request to be in flight")
    began = time.monotonic()
    wait_until(lambda: balancer.inflight() == 0, "in-flight count back to 0", within=3.0)
    assert time.monotonic() - began < 3.0  # long before the 5 s answer
    assert balancer.get("/aliases/w/after").status == 200
    metrics = balancer.admin("GET", "/-/metrics").body.decode()
    assert 'node_http_codes_total{node_id="a",code="499"} 1' in metrics


def received_headers(reply: Any) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in reply.json()["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers


def test_hop_by_hop_headers_are_not_forwarded(
    one_node: tuple[BalancerHarness, BackendProcess],
) -> None:
    balancer, _ = one_node
    hop = {
        "Connection": "keep-alive",
        "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive",
        "TE": "trailers",
        "Upgrade": "h2c",
        "X-Kept": "yes",
    }
    reply = balancer.request("GET", "/aliases/w/x?hop=1", headers=hop)
    assert reply.status == 200, reply.body
    seen = received_headers(reply)
    for name in ("connection", "keep-alive", "proxy-connection", "te", "upgrade"):
        assert name not in seen, (name, seen)
    assert seen["x-kept"] == ["yes"]
    # and on the way back: the backend's own hop-by-hop headers stay behind
    for name in ("keep-alive", "proxy-connection", "upgrade", "connection"):
        assert reply.header(name) is None, (name, reply.headers.items())

    # A chunked body is re-framed: one transfer-encoding, the balancer's.
    reply = balancer.request(
        "POST",
        "/aliases/w/x",
        headers={"Transfer-Encoding": "chunked"},
        body=iter([b"ab", b"c"]),
        encode_chunked=True,
    )
    seen = received_headers(reply)
    assert seen["transfer-encoding"] == ["chunked"] and reply.json()["bodyLength"] == 3


def test_headers_named_by_connection_are_not_forwarded(
    one_node: tuple[BalancerHarness, BackendProcess],
) -> None:
    balancer, _ = one_node
    reply = balancer.request(
        "GET", "/aliases/w/x", headers={"Connection": "keep-alive, x-hop", "X-Hop": "secret"}
    )
    assert reply.status == 200
    assert "x-hop" not in received_headers(reply)


def test_forwarding_headers_and_request_id_are_added(
    one_node: tuple[BalancerHarness, BackendProcess],
) -> None:
    balancer, _ = one_node
    reply = balancer.get("/aliases/w/x")
    seen = received_headers(reply)
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    [request_id] = seen["x-request-id"]
    assert request_id and reply.header("x-request-id") == request_id
    other = received_headers(balancer.get("/aliases/w/x"))["x-request-id"]
    assert other != [request_id]

    reply = balancer.get(
        "/aliases/w/x",
        {"X-Request-Id": "req-123", "X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https"},
    )
    seen = received_headers(reply)
    assert seen["x-request-id"] == ["req-123"]
    assert reply.header("x-request-id") == "req-123"
    # 127.0.0.1 is no trusted proxy here: what it claims is replaced (tests/balancer/
    # test_forwarding.py has the trusted case)
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
