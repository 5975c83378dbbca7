"""The request head the balancer sends upstream: one framing header, its own added headers."""

from __future__ import annotations

import asyncio
from types import MappingProxyType
from typing import Any

from balancer import http
from balancer.backends import Backends
from balancer.client import ClientConnection
from balancer.metrics import Metrics
from balancer.proxy import Proxy, Request
from balancer.routing import Affinity, Router
from balancer.table import AliasEntry, Endpoint, HealthSettings, NodeEntry, RoutingTable


class Transport:
    """Just enough of a transport for the parsing side of a client connection."""

    def get_extra_info(self, key: str) -> Any:
        return ("10.1.2.3", 5555)


class CapturingClient(ClientConnection):
    """A client connection that keeps the requests it would send instead of sending them."""

    __slots__ = ("prepared",)

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(proxy)
        self.prepared: list[Request] = []

    def start(self, request: Request) -> None:
        self.prepared.append(request)


def head_for(raw: bytes) -> bytes:
    table = RoutingTable(
        1,
        MappingProxyType({"a": NodeEntry((Endpoint("a0", "127.0.0.1", 9),), 1, HealthSettings())}),
        MappingProxyType({"web": AliasEntry((("a", 1),))}),
    )
    loop = asyncio.new_event_loop()
    try:
        proxy = Proxy(loop, Router(table, Backends()), Affinity(), Metrics())
        client = CapturingClient(proxy)
        client.connection_made(Transport())
        client.data_received(raw)
        return client.prepared[0].head
    finally:
        loop.close()


def test_a_body_is_framed_once() -> None:
    head = head_for(
        b"POST /aliases/web/predict?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"
    )
    lines = head.lower().split(b"\r\n")
    assert lines[0] == b"post /predict?x=1 http/1.1"
    assert [line for line in lines if line.startswith(b"content-length:")] == [b"content-length: 2"]


def test_forwarding_headers_are_added_and_hop_by_hop_ones_dropped() -> None:
    head = head_for(
        b"GET /aliases/web/ HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-hop\r\n"
        b"X-Hop: 1\r\nX-Request-Id: abc\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n"
    )
    lower = head.lower()
    assert b"connection:" not in lower and b"x-hop" not in lower
    assert b"x-forwarded-for: 10.1.2.3\r\n" in lower  # not a trusted proxy: 1.1.1.1 dropped
    assert lower.count(b"x-request-id: abc\r\n") == 1


def test_the_response_fast_path_rewrites_a_head_once_and_remembers_it() -> None:
    block = (
        b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 7\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nX-Request-Id: theirs"
    )
    first = http.fast_head(block)
    assert first == http.FastHead(
        b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 7", 7, 200, True
    )
    assert http.fast_head(bytes(block)) is first  # remembered: an equal block, not reworked
    closing = http.fast_head(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close")
    assert closing is not None and (closing.code, closing.keep_alive) == (201, False)
    # Anything else takes the parser's path.
    assert http.fast_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0") is None
    assert http.fast_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0") is None
    assert http.fast_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked") is None
    assert http.fast_head(b"HTTP/1.1 200 OK\r\nServer: s") is None


def test_remembered_response_heads_are_bounded() -> None:
    for n in range(http._FAST_HEADS_LIMIT + 10):
        http.fast_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nDate: %d" % n)
    assert len(http._FAST_HEADS) <= http._FAST_HEADS_LIMIT


def test_a_repeated_head_is_decided_once_per_route(monkeypatch: Any) -> None:
    from balancer import client as client_module
    from balancer.forwarding import forward as real  # what balancer.client calls

    calls: list[bytes] = []

    def counting(head: Any, *args: Any) -> Any:
        calls.append(head.target)
        return real(head, *args)

    monkeypatch.setattr(client_module, "forward", counting)
    raw = b"GET /aliases/web/again HTTP/1.1\r\nHost: h\r\n\r\n"
    table = RoutingTable(
        1,
        MappingProxyType({"a": NodeEntry((Endpoint("a0", "127.0.0.1", 9),), 1, HealthSettings())}),
        MappingProxyType({"web": AliasEntry((("a", 1),))}),
    )
    loop = asyncio.new_event_loop()
    try:
        proxy = Proxy(loop, Router(table, Backends()), Affinity(), Metrics())
        client = CapturingClient(proxy)
        client.connection_made(Transport())
        prepared = client.prepared
        for _ in range(4):  # the parser's path once, then the remembered head
            client.data_received(raw)
        proxy.router = Router(table, Backends())  # a swap: new routes, decided anew
        client.data_received(raw)
    finally:
        loop.close()
    assert len(calls) <= 3, calls  # parser's head, remembered head, after the swap
    heads = [r.head for r in prepared]
    assert len(set(heads)) == len(heads)  # each with its own request id
    assert all(h.count(b"x-request-id: ") == 1 for h in heads)
    assert len({h.split(b"x-request-id: ")[0] for h in heads}) == 1  # the rest is the same
