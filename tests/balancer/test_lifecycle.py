"""Connection and instance lifecycles: draining removed instances, graceful shutdown,
pipelining, HTTP/1.0 clients, backpressure, and clients that leave while connecting."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from balancer.table import Endpoint, NodeEntry
from tests.balancer.backend import CHUNKS
from tests.balancer.conftest import (
    HOST,
    BackendProcess,
    BalancerHarness,
    Reply,
    alias,
    health,
    node,
    request,
)
from tests.cycles import Cycles
from tests.waiting import wait_until


def test_removed_instance_finishes_its_requests_and_drains(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, a2 = start_backend("a1"), start_backend("a2")
    balancer.publish({"a": node(a1)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy"})
    slow: list[Reply] = []
    worker = threading.Thread(
        target=lambda: slow.append(balancer.get("/aliases/w/slow?ms=1000")), daemon=True
    )
    worker.start()
    try:
        wait_until(lambda: balancer.inflight() == 1, "the slow request to be in flight")
        balancer.publish({"a": node(a2)}, {"w": alias(("a", 1))})
        draining = balancer.status()["draining"]
        assert [(d["instance"], d["status"], d["inflight"]) for d in draining] == [
            ("a1", "Deleting", 1)
        ]
        balancer.wait_status({"a2": "Healthy"})
        reply = balancer.get("/aliases/w/x")
        assert reply.status == 200 and reply.backend == "a2"
    finally:
        worker.join(timeout=10)
    assert slow and slow[0].status == 200 and slow[0].backend == "a1"
    wait_until(lambda: balancer.status()["draining"] == [], "a1 to be drained")
    acks = list((balancer.table_file.parent / "balancers").glob("*.json"))
    assert len(acks) == 1
    ack = json.loads(acks[0].read_text())
    assert ack["generation"] == 2 and ack["draining"] == {}


def test_graceful_shutdown_finishes_in_flight_requests(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)})
    balancer.wait_status({"a1": "Healthy"})
    slow: list[Reply] = []
    worker = threading.Thread(
        target=lambda: slow.append(balancer.get("/nodes/a/slow?ms=800")), daemon=True
    )
    worker.start()
    wait_until(lambda: balancer.inflight() == 1, "the slow request to be in flight")
    port = balancer.port
    balancer.stop(drain_timeout=5.0)
    worker.join(timeout=10)
    assert slow and slow[0].status == 200 and slow[0].backend == "a1"
    with pytest.raises(OSError):
        socket.create_connection((HOST, port), timeout=1).close()


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the connection stayed open after {data!r}")


def test_pipelined_requests_are_answered_in_order(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy"})
    with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
        sock.sendall(
            b"GET /aliases/w/slow?ms=200 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /aliases/nope/x HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /aliases/w/third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = read_until_closed(sock)
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
    assert statuses == [200, 404, 200]
    assert data.index(b'"/slow"') < data.index(b"no alias 'nope'") < data.index(b'"/third"')


def test_http_1_0_client_gets_an_unframed_chunked_response(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)})
    balancer.wait_status({"a1": "Healthy"})
    with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
        sock.sendall(b"GET /nodes/a/chunked HTTP/1.0\r\nHost: x\r\n\r\n")
        data = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"".join(CHUNKS)


def test_a_slow_client_does_not_make_the_balancer_buffer_the_response(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)})
    balancer.wait_status({"a1": "Healthy"})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(5)
        sock.connect((HOST, balancer.port))
        sock.sendall(b"GET /nodes/a/big?mb=200 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536)
        # The client reads no more: the backend must soon be held back (bounded polling).
        samples: list[int] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            samples.append(a1.get("/-/stats").json()["sentMiB"])
            if len(samples) >= 4 and samples[-1] == samples[-4]:
                break
            time.sleep(0.1)
        assert samples[-1] == samples[-4], samples
        assert samples[-1] <= 48, f"{samples[-1]} MiB of 200 sent to a client that reads nothing"
    finally:
        sock.close()
    wait_until(lambda: balancer.inflight() == 0, "in-flight count back to 0")


def test_client_leaving_while_connecting_leaks_no_upstream_connection(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    checker = start_backend("checker")
    # The instance: a real listening socket with a full accept queue, so the balancer's
    # connect waits for a SYN retransmission; its health is checked on checker's port.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=2)
    try:
        slow_instance = type(checker)("slow", listener.getsockname()[1], checker.proc)
        balancer.publish({"a": node(slow_instance, port=checker.port)})
        balancer.wait_status({"slow": "Healthy"})
        with socket.create_connection((HOST, balancer.port), timeout=5) as client:
            client.sendall(b"GET /nodes/a/x HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_until(lambda: balancer.inflight() == 1, "the request to be connecting")
        wait_until(lambda: balancer.inflight() == 0, "the request to be released")
        listener.settimeout(8)
        listener.accept()[0].close()  # the filler: makes room in the accept queue
        upstream, _ = listener.accept()  # the balancer's connection, once its SYN is retried
        with upstream:
            upstream.settimeout(3)
            try:
                leftover = upstream.recv(1024)
            except TimeoutError:
                leftover = None
        assert leftover == b"", "the balancer kept an upstream connection nobody uses"
    finally:
        filler.close()
        listener.close()


class _AnswersThenCloses(http.server.BaseHTTPRequestHandler):
    """HTTP/1.0: every answer ends its connection, so the balancer opens one per request."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def closing_instance() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer((HOST, 0), _AnswersThenCloses)
    thread = threading.Thread(target=server.serve_forever, name="closing-instance", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_ended_connections_and_acks_leave_no_reference_cycles(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess], closing_instance: int
) -> None:
    """A balancer in watch runs for months: a connection that ended and is still held by a
    reference cycle waits for a full collection, rare in a large heap, and shows as growth."""
    kept = start_backend("kept")
    closing = NodeEntry((Endpoint("closing-0", HOST, closing_instance),), 1, health())
    balancer.publish({"kept": node(kept), "closing": closing})
    balancer.wait_status({"kept": "Healthy", "closing-0": "Healthy"})
    proxy = balancer.balancer.proxy

    def ended() -> bool:
        return bool(balancer.call(lambda: not proxy.clients and not proxy.upstreams - set(idle())))

    def idle() -> list[object]:
        return [u for b in balancer.balancer.backends.by_key.values() for u in b.idle]

    for path in ("/nodes/kept/warm", "/nodes/closing/warm"):
        assert request(balancer.port, "GET", path).status == 200
    wait_until(ended, "the warm-up's connections to end", 5.0)
    with Cycles(("balancer.", "httptools.", "json.")) as cycles:
        for index in range(10):  # a client connection each, and an instance connection each
            for path in ("/nodes/kept/", "/nodes/closing/"):
                assert request(balancer.port, "GET", f"{path}{index}").status == 200
        wait_until(ended, "the clients' and instances' connections to end", 5.0)
        for _ in range(3):  # what apply waits on, written at each table, health change, drain
            balancer.call(balancer.balancer.write_ack)
    assert not cycles.found, f"ended connections and acks left objects in cycles: {cycles.found}"


def test_serve_that_cannot_listen_says_so_and_exits(tmp_path: Path) -> None:
    # Before: a traceback, then the process hung at exit (the table file's watcher thread).
    # 192.0.2.1 is a documentation address: no interface of a test machine has it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = [sys.executable, "-m", "gitops_nodes", "serve", "--state-dir", str(tmp_path)]
        for address in (["--admin-port", str(port)], ["--host", "192.0.2.1"]):
            done = subprocess.run(
                [*serve, "--port", "0", "--admin-port", "0", *address],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            assert done.returncode == 1, done.stderr
            assert "error: cannot listen on " in done.stderr
            assert "Traceback" not in done.stderr


def test_serve_on_port_0_says_the_ports_it_bound(tmp_path: Path) -> None:
    # Before: "serving ... on http://127.0.0.1:0", the ports asked for, not those bound.
    output = tmp_path / "serve.log"
    command = [sys.executable, "-m", "gitops_nodes", "serve", "--state-dir", str(tmp_path)]
    with output.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port", "0", "--admin-port", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        pattern = (
            r"listening on http://127\.0\.0\.1:(\d+) \(control plane: http://127\.0\.0\.1:(\d+)/"
        )
        found = wait_until(
            lambda: re.search(pattern, output.read_text()), "the listening line", 30.0, 0.05
        )
        port, admin_port = int(found.group(1)), int(found.group(2))
        assert 0 not in (port, admin_port)
        assert request(port, "GET", "/nodes/none/").status == 404  # the data port, bound
        assert request(admin_port, "GET", "/-/healthz").status == 200
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_serve_refuses_port_0_for_several_workers(tmp_path: Path) -> None:
    # Each worker would bind a port of its own: clients would reach one worker in N.
    serve = [sys.executable, "-m", "gitops_nodes", "serve", "--state-dir", str(tmp_path)]
    process = subprocess.Popen(
        [*serve, "--port", "0", "--admin-port", "0", "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its workers, should it fork them, end with it below
    )
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 1, stderr
    assert "error: --port 0 with --workers 2: the workers share one port" in stderr
