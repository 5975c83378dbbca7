"""The balancer against a real third-party server: httpbin under gunicorn (both from the dev
extra), asked the same requests directly and through `/nodes/<n>/` and `/aliases/<a>/`.

Every answer must be the same, byte for byte once the differences the balancer makes on
purpose are taken out. Those are listed below, explicitly, as the allow-list; anything else
that differs fails the test with the request that showed it.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.client
import json
import re
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import brotlicffi
import pytest

from balancer.table import Endpoint, NodeEntry
from tests.balancer.conftest import HOST, BalancerHarness, alias, free_port, health
from tests.waiting import wait_until

# -- the allow-list: what the balancer changes on purpose --------------------------------------

# Response headers that may differ: the time of the answer, connection management (hop by
# hop, per connection), and the request id the balancer adds to every answer.
RESPONSE_HEADERS_ALLOWED_TO_DIFFER = frozenset({"date", "connection", "keep-alive", "x-request-id"})
# Request headers the instance sees that may differ (httpbin echoes them): Host names the
# port the client called, and the balancer adds forwarding headers and a request id.
ECHOED_HEADERS_ALLOWED_TO_DIFFER = frozenset(
    {
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-prefix",
        "forwarded",
        "x-request-id",
    }
)
# httpbin builds `url` (and absolute redirects' Location) from the Host header: the port the
# client called is replaced by a placeholder on both sides; `origin` comes from
# X-Forwarded-For, which names the same loopback client either way.
PORT_IN_URL = re.compile(r"//127\.0\.0\.1:\d+")

MIB = 2**20


@dataclass(frozen=True)
class Case:
    """One request: method, path (and query), header lines (repeats kept), body."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    chunked: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    extra: dict[str, Any] = field(default_factory=dict)


BIG_TEXT = base64.b64encode(hashlib.shake_256(b"gitops-nodes").digest(6 * MIB))  # 8 MiB ASCII

CASES: list[Case] = [
    # methods, query strings with repeated and non-ASCII keys, bodies
    Case("GET", "/get?a=1&a=2&b=%C3%A9&empty="),
    Case("POST", "/post", (("content-type", "application/json"),), b'{"x": [1, 2, "\\u00e9"]}'),
    Case("POST", "/post", (("content-type", "application/x-www-form-urlencoded"),), b"a=1&b=2"),
    Case("PUT", "/put", (("content-type", "text/plain"),), "héllo ✓".encode()),
    Case("PATCH", "/patch", (("content-type", "application/octet-stream"),), bytes(range(256))),
    Case("DELETE", "/delete?id=7"),
    Case("OPTIONS", "/get"),
    Case("HEAD", "/get"),
    Case("HEAD", "/bytes/4096?seed=3"),
    Case("HEAD", "/stream-bytes/4096?seed=3&chunk_size=512"),
    # status codes, with and without bodies
    *(Case("GET", f"/status/{code}") for code in (200, 201, 204, 304, 400, 404, 418, 500, 503)),
    Case("POST", "/status/202", body=b"x"),
    # multi-valued headers, both ways
    Case("GET", "/response-headers?X-Multi=a&X-Multi=b&Set-Cookie=c%3D1&Set-Cookie=d%3D2"),
    Case(
        "GET",
        "/headers",
        (("x-multi", "a"), ("x-multi", "b"), ("x-one", "é".encode().decode("latin-1"))),
    ),
    # compression: the encoded bytes pass untouched
    Case("GET", "/gzip", (("accept-encoding", "gzip"),)),
    Case("GET", "/deflate", (("accept-encoding", "deflate"),)),
    Case("GET", "/brotli", (("accept-encoding", "br"),)),
    # streaming and chunked responses, deterministic bytes
    Case("GET", "/stream/5"),
    Case("GET", "/stream-bytes/102400?seed=11&chunk_size=1000"),
    Case("GET", "/drip?duration=0.5&numbytes=5&delay=0&code=200"),
    Case("GET", "/bytes/102400?seed=5"),
    Case("GET", "/range/65536", (("range", "bytes=100-2047"),)),
    Case("GET", "/image/png"),
    Case("GET", "/encoding/utf8"),
    Case("GET", "/xml"),
    # large bodies, echoed byte for byte (in httpbin's JSON), with a length and chunked
    Case("POST", "/anything/big", (("content-type", "text/plain"),), BIG_TEXT),
    Case("POST", "/anything/chunked", (("content-type", "text/plain"),), BIG_TEXT[:MIB], True),
    # redirects: relative, absolute (Host-built) and to a given target, not followed
    Case("GET", "/redirect/2"),
    Case("GET", "/relative-redirect/2"),
    Case("GET", "/absolute-redirect/2"),
    Case("GET", "/redirect-to?url=%2Fget&status_code=307"),
    # cookies
    Case("GET", "/cookies/set?k1=v1&k2=v2"),
    Case("GET", "/cookies", (("cookie", "a=1; b=2"),)),
    # authentication and conditional requests
    Case("GET", "/basic-auth/user/pass"),
    Case("GET", "/basic-auth/user/pass", (("authorization", "Basic dXNlcjpwYXNz"),)),
    Case("GET", "/etag/abc", (("if-none-match", '"abc"'),)),
    Case("GET", "/etag/abc", (("if-match", '"nope"'),)),
    # unicode paths (percent-encoded, as HTTP/1.1 sends them)
    Case("GET", "/anything/caf%C3%A9/%E2%9C%93?q=%F0%9F%98%80"),
]


def ask(port: int, prefix: str, case: Case) -> Answer:
    """Send case on a fresh connection to 127.0.0.1:port, under prefix; the whole answer."""
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        connection.putrequest(
            case.method, prefix + case.path, skip_host=False, skip_accept_encoding=True
        )
        for name, value in case.headers:
            connection.putheader(name, value)
        body = case.body
        if body is not None and case.chunked:
            connection.putheader("transfer-encoding", "chunked")
            connection.endheaders()
            for start in range(0, len(body), 65536):
                piece = body[start : start + 65536]
                connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            connection.send(b"0\r\n\r\n")
        elif body is not None:
            connection.putheader("content-length", str(len(body)))
            connection.endheaders(body)
        else:
            connection.endheaders()
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, response.reason, response.getheaders(), data)
    finally:
        connection.close()


def decoded(answer: Answer) -> bytes:
    """The body without its content-encoding (what the client would read)."""
    encoding = dict((k.lower(), v) for k, v in answer.headers).get("content-encoding", "")
    if encoding == "gzip":
        return gzip.decompress(answer.body)
    if encoding == "deflate":
        return zlib.decompress(answer.body)
    if encoding == "br":
        return bytes(brotlicffi.decompress(answer.body))
    return answer.body


def normalized_json(value: Any) -> Any:
    """httpbin's echo with the allowed differences taken out."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "headers" and isinstance(item, dict):
                item = {
                    k: v
                    for k, v in item.items()
                    if k.lower() not in ECHOED_HEADERS_ALLOWED_TO_DIFFER
                }
            out[key] = normalized_json(item)
        return out
    if isinstance(value, list):
        return [normalized_json(item) for item in value]
    if isinstance(value, str):
        return PORT_IN_URL.sub("//127.0.0.1:PORT", value)
    return value


def comparable(answer: Answer) -> dict[str, Any]:
    """What must be the same directly and through the balancer."""
    body = decoded(answer)
    content_type = dict((k.lower(), v) for k, v in answer.headers).get("content-type", "")
    echoed = False
    shown: Any = body
    if "json" in content_type and body:
        lines = (
            body.decode().splitlines() if b"\n{" in body and not body.startswith(b"{\n") else None
        )
        try:
            if lines is not None:  # /stream/N: one JSON object per line
                shown = [normalized_json(json.loads(line)) for line in lines]
            else:
                shown = normalized_json(json.loads(body))
            echoed = True
        except ValueError:
            shown = body
    elif content_type.startswith("text/html") and PORT_IN_URL.search(body.decode("latin-1")):
        shown = PORT_IN_URL.sub("//127.0.0.1:PORT", body.decode("latin-1"))  # a redirect page
        echoed = True
    headers = []
    for name, value in answer.headers:
        lower = name.lower()
        if lower in RESPONSE_HEADERS_ALLOWED_TO_DIFFER:
            continue
        if echoed and lower == "content-length":  # the echo's length follows its contents
            continue
        if lower == "content-length" and "json" in content_type and not answer.body:
            continue  # a HEAD's: the length of the GET's echo, which holds forwarding headers
        headers.append((lower, PORT_IN_URL.sub("//127.0.0.1:PORT", value)))
    return {
        "status": answer.status,
        "reason": answer.reason,
        # Fields of different names may come in another order (their order carries no
        # meaning, RFC 9110 5.3; the balancer writes the framing header last); the values of
        # one name must keep theirs: a stable sort by name keeps exactly that.
        "headers": sorted(headers, key=lambda header: header[0]),
        "body": shown,
        # gzip'd echoes differ in their compressed bytes only because their contents do
        "rawBodyLength": None if echoed else len(answer.body),
    }


# -- httpbin under gunicorn -------------------------------------------------------------------


@pytest.fixture(scope="module")
def httpbin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """httpbin served by gunicorn (threaded workers, keep-alive) on a free loopback port."""
    port = free_port()
    log_path: Path = tmp_path_factory.mktemp("httpbin") / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"{HOST}:{port}",
                "--worker-class",
                "gthread",
                "--threads",
                "8",
                "--workers",
                "1",
                "--no-control-socket",  # its default socket path is shared by every gunicorn
                "httpbin:app",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def answers() -> bool:
        assert process.poll() is None, log_path.read_text()
        with contextlib.suppress(OSError, http.client.HTTPException):
            return ask(port, "", Case("GET", "/status/200")).status == 200
        return False

    try:
        wait_until(answers, "httpbin under gunicorn to answer", 60.0, 0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def fronted(balancer: BalancerHarness, httpbin: int) -> BalancerHarness:
    """The balancer with httpbin as node `hb` (health checked on /status/200), alias `bin`."""
    entry = NodeEntry(
        endpoints=(Endpoint("hb-0", HOST, httpbin),),
        min_healthy=1,
        health=health(path="/status/200", interval=0.5),
    )
    balancer.publish({"hb": entry}, {"bin": alias(("hb", 1))})
    balancer.wait_status({"hb-0": "Healthy"}, within=20.0)
    return balancer


@pytest.mark.parametrize("case", CASES, ids=str)
def test_httpbin_answers_the_same_directly_and_through_the_balancer(
    fronted: BalancerHarness, httpbin: int, case: Case
) -> None:
    direct = comparable(ask(httpbin, "", case))
    for prefix in ("/nodes/hb", "/aliases/bin"):
        balanced = ask(fronted.port, prefix, case)
        assert any(k.lower() == "x-request-id" for k, _ in balanced.headers), case
        assert comparable(balanced) == direct, f"{case} through {prefix}"


def test_large_bodies_are_echoed_byte_for_byte(fronted: BalancerHarness, httpbin: int) -> None:
    for case in (c for c in CASES if c.path.startswith("/anything/") and c.body):
        for port, prefix in (
            (httpbin, ""),
            (fronted.port, "/nodes/hb"),
            (fronted.port, "/aliases/bin"),
        ):
            answer = ask(port, prefix, case)
            assert answer.status == 200, (case, prefix)
            assert json.loads(answer.body)["data"].encode() == case.body, (case, prefix)
