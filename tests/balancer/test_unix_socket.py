"""Instances that also serve on a Unix socket: requests go there; the TCP port is the fallback.

The node's endpoint names a Unix socket served by a small HTTP server in this process (it
answers `{"via": "unix"}`) and the TCP port of a backend.py process (which answers with its
name): health checks go to the port, requests to the socket while it answers.
"""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.balancer.conftest import BackendProcess, BalancerHarness, alias, node, request


class UnixHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the balancer pools connections

    def do_GET(self) -> None:
        body = json.dumps({"via": "unix", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None

    def address_string(self) -> str:
        return "unix"  # a Unix peer has no (host, port)


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[Path]:
    """An HTTP server on a Unix socket in tmp_path, until the test ends."""
    path = tmp_path / "socket"
    server = UnixHTTPServer(str(path), UnixHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_requests_go_to_the_instance_socket(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess], unix_server: Path
) -> None:
    a1 = start_backend("a1")
    entry = node(a1)
    endpoint = replace(entry.endpoints[0], socket=str(unix_server))
    balancer.publish({"a": replace(entry, endpoints=(endpoint,))}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy"})  # checked on its TCP port

    replies = [request(balancer.port, "GET", f"/aliases/w/n{i}") for i in range(5)]

    assert [(r.status, r.json()) for r in replies] == [
        (200, {"via": "unix", "path": f"/n{i}"}) for i in range(5)
    ]
    assert served_over_tcp(a1) == []  # health checks only


def test_a_socket_that_does_not_answer_falls_back_to_the_port(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess], tmp_path: Path
) -> None:
    a1 = start_backend("a1")
    entry = node(a1)
    endpoint = replace(entry.endpoints[0], socket=str(tmp_path / "missing"))
    balancer.publish({"a": replace(entry, endpoints=(endpoint,))}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy"})

    reply = request(balancer.port, "GET", "/aliases/w/hello")

    assert (reply.status, reply.backend) == (200, "a1")
    assert served_over_tcp(a1) == ["/hello"]


def served_over_tcp(backend: BackendProcess) -> list[str]:
    """The paths the backend's TCP port answered, besides health checks and its controls."""
    return sorted(p for p in backend.counts() if p != "/healthz" and not p.startswith("/-/"))
