"""The web console on the admin port, over real HTTP on loopback: its page and files, the
strict CSP, the login cookie, CSRF on actions, the status stream, each node's traffic, and
the `/-/status` JSON Schema checked against real answers."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest
from starlette.applications import Starlette

import balancer.console as console_module
from balancer.access import AdminGuard
from balancer.console import COOKIE, CSP, Console
from balancer.console.traffic import quantile
from balancer.metrics import BUCKETS
from tests.balancer.conftest import (
    HOST,
    BackendProcess,
    BalancerHarness,
    alias,
    node,
    request,
)
from tests.balancer.test_hostile import read_to_eof
from tests.resident import resident_bytes
from tests.status_schema import validate_status
from tests.waiting import wait_until

ADMIN = "console-admin-key-0123456789"


def test_the_page_and_its_files_come_from_the_package_with_a_strict_csp(
    make_balancer: Callable[..., BalancerHarness],
) -> None:
    harness = make_balancer()
    root = request(harness.admin_port, "GET", "/")
    assert root.status == 303 and root.header("location") == "/-/ui/"
    page = request(harness.admin_port, "GET", "/-/ui/")
    assert page.status == 200
    assert (
        page.header(
            "content-type",
        )
        == "text/html; charset=utf-8"
    )
    assert page.header("content-security-policy") == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    html = page.body.decode()
    assets = re.findall(r'(?:src|href)="(/-/ui/static/[^"]+)"', html)
    assert sorted(assets) == ["/-/ui/static/console.css", "/-/ui/static/console.js"]
    for path in assets:
        reply = request(harness.admin_port, "GET", path)
        assert reply.status == 200, path
        # No external fetch: nothing in the page's files names another host.
        assert not re.search(rb"https?://", reply.body), path
    assert "<script>" not in html and " style=" not in html  # nothing inline for the CSP
    assert request(harness.admin_port, "GET", "/-/ui/static/../control.py").status == 404
    # JSON answers carry the headers too.
    assert request(harness.admin_port, "GET", "/-/status").header("x-frame-options") == "DENY"


def test_with_a_key_the_console_needs_a_login_whose_cookie_is_not_the_key(
    make_balancer: Callable[..., BalancerHarness],
) -> None:
    harness = make_balancer(admin_token=ADMIN)
    port = harness.admin_port
    page = request(port, "GET", "/-/ui/")
    assert page.status == 303 and page.header("location") == "/-/ui/login"
    assert request(port, "GET", "/-/status").status == 401
    assert request(port, "GET", "/-/status/stream").status == 401
    assert request(port, "GET", "/-/ui/session").status == 401
    form = request(port, "GET", "/-/ui/login")
    assert form.status == 200 and b'name="key"' in form.body
    # The form's path exactly, not every path that begins with it (was: /-/ui/loginX open).
    assert request(port, "GET", "/-/ui/loginX").status == 401
    assert request(port, "GET", "/-/ui/static/console.js").status == 200  # no secret in it
    urlencoded = {"content-type": "application/x-www-form-urlencoded"}
    wrong = request(port, "POST", "/-/ui/login", urlencoded, b"key=not-the-key-at-all-000")
    assert wrong.status == 401 and b"not the admin key" in wrong.body
    assert wrong.header("set-cookie") is None
    foreign = request(
        port, "POST", "/-/ui/login", {**urlencoded, "origin": "http://evil.test"}, f"key={ADMIN}"
    )
    assert foreign.status == 403 and foreign.header("set-cookie") is None
    good = request(port, "POST", "/-/ui/login", urlencoded, f"key={ADMIN}".encode())
    assert good.status == 303 and good.header("location") == "/-/ui/"
    cookie = good.header("set-cookie") or ""
    assert cookie.startswith(f"{COOKIE}=") and ADMIN not in cookie
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "path=/" in lowered
    session = {"cookie": cookie.split(";")[0]}
    assert request(port, "GET", "/-/status", session).status == 200
    assert request(port, "GET", "/-/ui/", session).status == 200
    made_up = {"cookie": f"{COOKIE}=made-up-session"}
    assert request(port, "GET", "/-/status", made_up).status == 401


def test_a_login_form_past_its_limit_is_413_and_never_read_whole(
    make_balancer: Callable[..., BalancerHarness],
) -> None:
    # Anyone who reaches the admin port may post the form before any key is checked.
    harness = make_balancer(admin_token=ADMIN)
    before = resident_bytes()
    declared = b"content-length: %d\r\n\r\nkey=" % (64 * 2**20)
    chunked = b"transfer-encoding: chunked\r\n\r\n"
    for framing, block in (
        (declared, b"k" * 65536),
        (chunked, b"10000\r\n%s\r\n" % (b"k" * 65536)),
    ):
        with socket.create_connection((HOST, harness.admin_port), timeout=10) as sock:
            sock.sendall(
                b"POST /-/ui/login HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/x-www-form-urlencoded\r\n" + framing
            )
            with contextlib.suppress(OSError):  # it may close before all of it is sent
                for _ in range(1024):  # 64 MiB
                    sock.sendall(block)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b"larger than 8192 bytes" in answer
        assert b"set-cookie" not in answer.lower()
    assert resident_bytes() - before < 24 * 2**20


def test_a_login_form_that_never_arrives_whole_is_answered_and_closed(
    make_balancer: Callable[..., BalancerHarness], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the connection was held for good (no key needed), and enough of them made
    # the admin port answer 503 to everyone, /-/healthz included.
    monkeypatch.setattr(console_module, "LOGIN_BODY_SECONDS", 0.3)
    harness = make_balancer(admin_token=ADMIN)
    with socket.create_connection((HOST, harness.admin_port), timeout=10) as sock:
        sock.sendall(b"POST /-/ui/login HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nkey=")
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"did not arrive within 0.3 s" in answer


def test_a_client_that_leaves_mid_form_is_no_error_of_the_console() -> None:
    # Before: starlette's ClientDisconnect escaped the handler: a 3.5 KB traceback logged
    # for each such client, which a loop of them could repeat without end.
    app = Starlette(routes=Console().routes(AdminGuard(ADMIN)))
    scope = {
        "type": "http", "method": "POST", "path": "/-/ui/login", "root_path": "",
        "query_string": b"", "headers": [(b"content-length", b"10")], "scheme": "http",
        "server": ("127.0.0.1", 8081), "http_version": "1.1",
    }  # fmt: skip
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # raised ClientDisconnect
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example:8081", 421),
        ("localhost.evil.example", 421),
        ("127.0.0.1:8081", 200),
        ("[::1]:8081", 200),
        ("localhost:8081", 200),
        ("10.1.2.3", 200),
    ],
)
def test_without_a_key_the_admin_port_answers_only_its_address_or_localhost(
    make_balancer: Callable[..., BalancerHarness], host: str, status: int
) -> None:
    # DNS rebinding: a page whose name its attacker points at 127.0.0.1 is the console's own
    # origin to the browser. Before, it read /-/status and ran actions (CSRF token and all).
    harness = make_balancer()
    assert request(harness.admin_port, "GET", "/-/status", {"Host": host}).status == status
    assert request(harness.admin_port, "GET", "/-/healthz", {"Host": host}).status == 200


def test_an_action_needs_the_csrf_token_of_its_session(
    make_balancer: Callable[..., BalancerHarness],
) -> None:
    harness = make_balancer(admin_token=ADMIN)
    ran: list[str] = []

    async def reconcile() -> dict[str, Any]:
        ran.append("reconcile")
        return {"accepted": True}

    harness.call(lambda: harness.balancer.console.actions.__setitem__("reconcile", reconcile))
    port = harness.admin_port
    login = request(
        port,
        "POST",
        "/-/ui/login",
        {"content-type": "application/x-www-form-urlencoded"},
        f"key={ADMIN}".encode(),
    )
    session = {"cookie": (login.header("set-cookie") or "").split(";")[0]}
    csrf = request(port, "GET", "/-/ui/session", session).json()["csrf"]
    assert request(port, "POST", "/-/actions/reconcile", session).status == 403
    wrong = {**session, "x-csrf-token": "0" * 64}
    assert request(port, "POST", "/-/actions/reconcile", wrong).status == 403
    cross = {**session, "x-csrf-token": csrf, "origin": "http://evil.test"}
    assert request(port, "POST", "/-/actions/reconcile", cross).status == 403
    assert ran == []
    ok = {**session, "x-csrf-token": csrf, "origin": f"http://{HOST}:{port}"}
    reply = request(port, "POST", "/-/actions/reconcile", ok)
    assert reply.status == 202 and reply.json() == {"accepted": True}
    assert ran == ["reconcile"]
    # The admin key in a header is enough (no browser sends it for another site).
    keyed = {"authorization": f"Bearer {ADMIN}"}
    assert request(port, "POST", "/-/actions/reconcile", keyed).status == 202
    assert request(port, "POST", "/-/actions/nope", keyed).status == 404
    assert request(port, "GET", "/-/actions/reconcile", keyed).status == 405
    assert ran == ["reconcile", "reconcile"]


def read_event(response: http.client.HTTPResponse, within: float) -> dict[str, Any]:
    """The next `data:` event of a server-sent event stream."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = response.readline()
        if line.startswith(b"data: "):
            document: dict[str, Any] = json.loads(line[len(b"data: ") :])
            return document
    raise AssertionError(f"no event within {within} s")


def test_the_stream_sends_a_new_table_and_status_shows_each_nodes_traffic(
    make_balancer: Callable[..., BalancerHarness],
    start_backend: Callable[..., BackendProcess],
) -> None:
    harness = make_balancer()
    a1, b1 = start_backend("a1"), start_backend("b1")
    harness.publish({"a": node(a1), "b": node(b1)}, {"front": alias(("a", 3), ("b", 1))})
    harness.wait_status({"a1": "Healthy", "b1": "Healthy"}, within=20.0)
    conn = http.client.HTTPConnection(HOST, harness.admin_port, timeout=30)
    try:
        conn.request("GET", "/-/status/stream")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type", "").startswith("text/event-stream")
        first = read_event(response, 10.0)
        validate_status(first)
        assert first["generation"] == harness.generation
        harness.publish({"a": node(a1), "b": node(b1)}, {"front": alias(("a", 1), ("b", 1))})
        changed = time.monotonic()
        while True:  # the stream says so by itself, without a new request
            event = read_event(response, 10.0)
            if event["generation"] == harness.generation:
                break
        assert time.monotonic() - changed < 5.0
        assert event["aliases"][0]["nodes"] == [
            {"node": "a", "weight": 1, "status": "Healthy"},
            {"node": "b", "weight": 1, "status": "Healthy"},
        ]
    finally:
        conn.close()
    for _ in range(40):
        assert harness.get("/aliases/front/x").status == 200

    def counted() -> dict[str, Any] | None:
        document = harness.status()
        traffic = {n["name"]: n["traffic"] for n in document["nodes"]}
        total = traffic["a"]["requests"] + traffic["b"]["requests"]
        recent = traffic["a"]["requestsPerSecond"] + traffic["b"]["requestsPerSecond"]
        return document if total == 40 and recent > 0 else None

    document = wait_until(counted, "the status to count 40 recent requests", 15.0)
    validate_status(document)
    busy = next(n["traffic"] for n in document["nodes"] if n["traffic"]["requests"])
    assert busy["errors"] == 0 and busy["errorRate"] == 0.0
    assert 0 < busy["p50"] <= busy["p99"] <= BUCKETS[-1]
    detail = harness.status_of("a")
    validate_status(detail)
    assert detail["node"]["name"] == "a" and detail["node"]["spec"] is None


def test_quantiles_come_from_the_histogram_like_prometheus() -> None:
    none = (0,) * (len(BUCKETS) + 1)
    assert quantile(0.5, none) is None
    ten_ms = list(none)
    ten_ms[BUCKETS.index(0.01)] = 10  # all ten requests between 5 ms and 10 ms
    assert quantile(0.5, tuple(ten_ms)) == 0.0075
    slow = list(none)
    slow[-1] = 1  # past the last bound: the last bound
    assert quantile(0.99, tuple(slow)) == BUCKETS[-1]
