"""Forwarding headers by the book, over real loopback HTTP to real backend processes.

Requests are written on raw sockets where a test needs a header twice (http.client would
fold or refuse them); the backend answers with the header lines it received, in order.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from balancer.proxy import ProxySettings
from balancer.settings import parse_trusted_proxies
from balancer.table import AccessKey, AccessRule
from tests.balancer.conftest import HOST, BackendProcess, BalancerHarness, alias, node
from tests.balancer.test_proxying import read_response

TRUSTING = ProxySettings(trusted_proxies=parse_trusted_proxies(["127.0.0.0/8"]))
KEY = "robot-key-00112233445566778899"
OTHER_KEY = "other-key-99887766554433221100"
PRIVATE = AccessRule(
    (
        AccessKey("robot", hashlib.sha256(KEY.encode()).hexdigest()),
        AccessKey("other", hashlib.sha256(OTHER_KEY.encode()).hexdigest()),
    )
)


def serve(
    harness: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> BalancerHarness:
    """Node a (instance a1), public; node p (instance p1), private; alias w -> a."""
    a1, p1 = start_backend("a1"), start_backend("p1")
    harness.publish({"a": node(a1), "p": node(p1, access=PRIVATE)}, {"w": alias(("a", 1))})
    harness.wait_status({"a1": "Healthy", "p1": "Healthy"})
    return harness


@pytest.fixture
def untrusting(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> BalancerHarness:
    """A balancer with no trusted proxies (the default)."""
    return serve(balancer, start_backend)


@pytest.fixture
def trusting(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> BalancerHarness:
    """A balancer that trusts 127.0.0.0/8, where the tests' requests come from."""
    return serve(make_balancer(TRUSTING), start_backend)


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(raw)
        return read_response(sock)


def received(body: bytes, key: str = "headers") -> dict[str, list[str]]:
    """The header lines the backend received, by lowercase name, in order."""
    document = json.loads(body)
    pairs = document[key] if key in document else document["output"][key]
    found: dict[str, list[str]] = {}
    for name, value in pairs:
        found.setdefault(name.lower(), []).append(value)
    return found


CLAIMS = (
    b"X-Forwarded-For: 1.1.1.1\r\n"
    b"X-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: public.example\r\n"
    b"X-Forwarded-Prefix: /api/\r\n"
    b"Forwarded: for=1.1.1.1;proto=https\r\n"
    b"Forwarded: for=2.2.2.2\r\n"
)


def test_an_untrusted_client_s_forwarding_headers_are_replaced(untrusting: BalancerHarness) -> None:
    raw = b"GET /aliases/w/x HTTP/1.1\r\nHost: h:8080\r\n" + CLAIMS + b"\r\n"
    code, _, body = exchange(untrusting.port, raw)
    assert code == 200, body
    seen = received(body)
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["h:8080"]
    assert seen["x-forwarded-prefix"] == ["/aliases/w"]
    assert seen["forwarded"] == ['for=127.0.0.1;host="h:8080";proto=http']


def test_a_trusted_proxy_s_forwarding_headers_are_passed_on_and_appended_to(
    trusting: BalancerHarness,
) -> None:
    raw = b"GET /nodes/a/x HTTP/1.1\r\nHost: h:8080\r\n" + CLAIMS + b"\r\n"
    code, _, body = exchange(trusting.port, raw)
    assert code == 200, body
    seen = received(body)
    # every line, joined in order, then the peer the balancer saw
    assert seen["x-forwarded-for"] == ["1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == ["public.example"]
    assert seen["x-forwarded-prefix"] == ["/api/nodes/a"]
    assert seen["forwarded"] == [
        'for=1.1.1.1;proto=https, for=2.2.2.2, for=127.0.0.1;host="h:8080";proto=http'
    ]


def test_the_prefix_is_forwarded_only_on_prefix_routes(untrusting: BalancerHarness) -> None:
    via_alias = untrusting.get("/aliases/w/deep/path?q=1")
    assert received(via_alias.body)["x-forwarded-prefix"] == ["/aliases/w"]
    via_node = untrusting.get("/nodes/a")
    assert received(via_node.body)["x-forwarded-prefix"] == ["/nodes/a"]
    by_header = untrusting.get("/deep/path", {"x-node-id": "a", "X-Forwarded-Prefix": "/evil"})
    assert by_header.status == 200
    assert "x-forwarded-prefix" not in received(by_header.body)


def test_two_request_ids_the_first_wins_and_a_bad_one_is_replaced(
    untrusting: BalancerHarness,
) -> None:
    raw = (
        b"GET /aliases/w/x HTTP/1.1\r\nHost: h\r\n"
        b"X-Request-Id: first-1\r\nX-Request-Id: second-2\r\n\r\n"
    )
    code, headers, body = exchange(untrusting.port, raw)
    assert code == 200
    assert received(body)["x-request-id"] == ["first-1"]
    assert headers["x-request-id"] == "first-1"

    too_long = b"r" * 201
    raw = b"GET /aliases/w/x HTTP/1.1\r\nHost: h\r\nX-Request-Id: %s\r\n\r\n" % too_long
    code, headers, body = exchange(untrusting.port, raw)
    [made] = received(body)["x-request-id"]
    assert code == 200 and made != too_long.decode() and headers["x-request-id"] == made


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"GARBAGE\x01 / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (
            b"GET /aliases/w/ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n",
            501,
        ),
        (b"GET /nowhere HTTP/1.1\r\nHost: h\r\n\r\n", 404),
        (b"GET /aliases/w/x HTTP/1.1\r\nHost: h\r\nContent-Length: x1\r\n\r\n", 400),
    ],
)
def test_every_answer_the_balancer_makes_has_a_real_request_id(
    untrusting: BalancerHarness, raw: bytes, code: int
) -> None:
    status, headers, body = exchange(untrusting.port, raw)
    assert status == code, body
    request_id = headers["x-request-id"]
    assert request_id not in ("", "-")
    assert json.loads(body)["requestId"] == request_id


def test_execute_calls_get_the_same_forwarding_headers(
    trusting: BalancerHarness, untrusting: BalancerHarness
) -> None:
    body = json.dumps({"input": {"n": 1}}).encode()
    raw = (
        b"POST /datasphere/v1/nodes/a:execute HTTP/1.1\r\nHost: h\r\n"
        b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body) + CLAIMS + b"\r\n" + body
    )
    code, _, answer = exchange(trusting.port, raw)
    assert code == 200, answer
    seen = received(answer)
    assert seen["x-forwarded-for"] == ["1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["forwarded"][0].endswith(", for=127.0.0.1;host=h;proto=http")
    assert seen["content-type"] == ["application/json"]
    assert seen["x-forwarded-prefix"] == ["/api"]  # passed on; the execute URL is no prefix

    code, _, answer = exchange(untrusting.port, raw)
    assert code == 200, answer
    seen = received(answer)
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["forwarded"] == ["for=127.0.0.1;host=h;proto=http"]
    assert "x-forwarded-prefix" not in seen


KEY_LINES = (
    b"X-Api-Key: %s\r\nx-API-key: %s\r\nX-API-KEY: %s\r\n"
    b"Authorization: Api-Key %s\r\nauthorization: bearer   %s  \r\n"
    % (KEY.encode(), KEY.encode(), OTHER_KEY.encode(), OTHER_KEY.encode(), KEY.encode())
)


def test_no_key_line_reaches_a_private_instance_by_any_path(untrusting: BalancerHarness) -> None:
    raw = b"GET /nodes/p/x HTTP/1.1\r\nHost: h\r\n" + KEY_LINES + b"\r\n"
    code, _, body = exchange(untrusting.port, raw)
    assert code == 200, body
    assert KEY.encode() not in body and OTHER_KEY.encode() not in body
    assert received(body)["x-gitops-nodes-caller"] == ["robot"]

    call = json.dumps({"input": {}}).encode()
    raw = (
        b"POST /datasphere/v1/nodes/p:execute HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n"
        % len(call)
        + KEY_LINES
        + b"\r\n"
        + call
    )
    code, _, body = exchange(untrusting.port, raw)
    assert code == 200, body
    assert KEY.encode() not in body and OTHER_KEY.encode() not in body
    assert received(body)["x-gitops-nodes-caller"] == ["robot"]


# -- prefixRewrite: Location and cookie paths under the prefix ---------------------------


@pytest.fixture
def rewriting(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> BalancerHarness:
    """Node on (prefixRewrite) and node off, one instance each; alias on-alias (prefixRewrite)
    -> off, alias off-alias -> on: the route's own setting decides, not the node behind."""
    r1, p1 = start_backend("r1"), start_backend("p1")
    balancer.publish(
        {"on": node(r1, prefix_rewrite=True), "off": node(p1)},
        {"on-alias": alias(("off", 1), prefix_rewrite=True), "off-alias": alias(("on", 1))},
    )
    balancer.wait_status({"r1": "Healthy", "p1": "Healthy"})
    return balancer


def follow(harness: Any, path: str, hops: int = 5) -> tuple[list[str], Any]:
    """GET path and follow redirects like `curl -L` (same host), up to hops times."""
    visited = [path]
    reply = harness.get(path, {"Host": "h.example"})
    while 300 <= reply.status < 400 and len(visited) <= hops:
        location = reply.header("location")
        assert location, reply.headers.items()
        if location.startswith("http://h.example"):
            location = location[len("http://h.example") :]
        visited.append(location)
        reply = harness.get(location, {"Host": "h.example"})
    return visited, reply


@pytest.mark.parametrize("code", [302, 201])  # the parser's path, and the 2xx fast path
def test_redirects_stay_under_the_prefix_when_rewriting_is_on(
    rewriting: BalancerHarness, code: int
) -> None:
    for prefix in ("/nodes/on", "/aliases/on-alias"):
        reply = rewriting.get(f"{prefix}/redirect?to=/landing&code={code}", {"Host": "h"})
        assert reply.status == code and reply.header("location") == f"{prefix}/landing"
    visited, reply = follow(rewriting, "/nodes/on/redirect?to=/landing")
    assert visited == ["/nodes/on/redirect?to=/landing", "/nodes/on/landing"]
    assert reply.status == 200 and reply.json()["path"] == "/landing"
    # an absolute URL on the request's host too; another host and relative ones as they are
    absolute = "http://h.example/next?x=1"
    visited, reply = follow(rewriting, f"/nodes/on/redirect?to={absolute}")
    assert visited[-1] == "/nodes/on/next?x=1" and reply.json()["path"] == "/next"
    elsewhere = rewriting.get("/nodes/on/redirect?to=http://other.example/x", {"Host": "h"})
    assert elsewhere.header("location") == "http://other.example/x"
    relative = rewriting.get("/nodes/on/redirect?to=next", {"Host": "h"})
    assert relative.header("location") == "next"
    # already under the prefix (an instance that honours X-Forwarded-Prefix): left alone
    done = rewriting.get("/nodes/on/redirect?to=/nodes/on/x", {"Host": "h"})
    assert done.header("location") == "/nodes/on/x"


def test_redirects_leave_the_prefix_when_rewriting_is_off(rewriting: BalancerHarness) -> None:
    visited, reply = follow(rewriting, "/nodes/off/redirect?to=/landing")
    assert visited == ["/nodes/off/redirect?to=/landing", "/landing"]
    assert reply.status == 404  # the balancer's: /landing is no route
    reply = rewriting.get("/aliases/off-alias/redirect?to=/landing")  # its node has it on
    assert reply.header("location") == "/landing"
    by_header = rewriting.get("/redirect?to=/landing", {"x-node-id": "on"})  # no prefix
    assert by_header.header("location") == "/landing"


def test_cookie_paths_follow_the_setting(rewriting: BalancerHarness) -> None:
    on = rewriting.get("/aliases/on-alias/cookie?path=/")
    assert on.headers.get_all("set-cookie") == ["s=1; Path=/aliases/on-alias; HttpOnly", "t=2"]
    deep = rewriting.get("/nodes/on/cookie?path=/app")
    assert deep.headers.get_all("set-cookie") == ["s=1; Path=/nodes/on/app; HttpOnly", "t=2"]
    off = rewriting.get("/nodes/off/cookie?path=/")
    assert off.headers.get_all("set-cookie") == ["s=1; Path=/; HttpOnly", "t=2"]
