"""Fixtures for the balancer's tests: real backend processes and a real Balancer, over loopback.

`start_backend(name, ...)` runs tests/balancer/backend.py as a subprocess and waits (polling,
with a deadline) until its port answers. `make_balancer(settings)` runs a Balancer on its own
event loop in a background thread, listening on 127.0.0.1; `harness.publish(nodes, aliases)`
writes the table file atomically with write_table() and waits until `/-/status` reports the
new generation. Teardown stops every balancer and kills every backend, even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pytest

from balancer.proxy import ProxySettings
from balancer.push import push_routes
from balancer.server import Balancer, ServeOptions, new_loop
from balancer.table import (
    AccessRule,
    AliasEntry,
    Endpoint,
    HealthSettings,
    NodeEntry,
    RoutingTable,
    write_table,
)
from tests.waiting import wait_until

if TYPE_CHECKING:
    from tests.balancer.served import ServeProcess

HOST = "127.0.0.1"
BACKEND_SCRIPT = Path(__file__).with_name("backend.py")
PROJECT = "proj"


# -- HTTP over loopback ---------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def backend(self) -> str | None:
        """The name of the backend that answered (JSON `name` or header x-backend)."""
        name = self.headers.get("x-backend")
        if name is None and self.body.startswith(b"{"):
            name = self.json().get("name")
        return name


def send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
    encode_chunked: bool = False,
) -> Reply:
    """One request on an open keep-alive connection."""
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=encode_chunked)
    response = conn.getresponse()
    return Reply(response.status, response.headers, response.read())


def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
    timeout: float = 10.0,
    encode_chunked: bool = False,
) -> Reply:
    """One request on a fresh connection to 127.0.0.1:port."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        return send(conn, method, path, headers, body, encode_chunked)
    finally:
        conn.close()


# -- backends -----------------------------------------------------------------------------


@dataclass
class BackendProcess:
    """One backend.py process on 127.0.0.1:port."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, HOST, self.port)

    def get(self, path: str) -> Reply:
        return request(self.port, "GET", path)

    def set_healthy(self, healthy: bool) -> None:
        reply = request(self.port, "POST", f"/-/toggle-health?healthy={int(healthy)}")
        assert reply.status == 200 and reply.json()["healthy"] is healthy

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = self.get("/-/stats").json()["counts"]
        return counts

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def _read_port(proc: subprocess.Popen[bytes], name: str, within: float) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + within
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"backend {name} did not report its port within {within:g}s")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.1))
        if ready:
            line = proc.stdout.readline().decode().strip()
            if not line.startswith("PORT "):
                raise AssertionError(f"backend {name} exited or said {line!r} instead of PORT")
            return int(line.split()[1])
        if proc.poll() is not None:
            raise AssertionError(f"backend {name} exited with {proc.returncode} before listening")


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def start_backend(tmp_path: Path) -> Iterator[Callable[..., BackendProcess]]:
    """Start backend.py processes; every one of them is killed at teardown."""
    started: list[BackendProcess] = []

    def start(name: str, *, unhealthy: bool = False, health_delay_ms: int = 0) -> BackendProcess:
        args = [sys.executable, str(BACKEND_SCRIPT), "--name", name, "--port", "0"]
        if unhealthy:
            args.append("--unhealthy")
        if health_delay_ms:
            args += ["--health-delay-ms", str(health_delay_ms)]
        log = (tmp_path / f"backend-{name}.log").open("wb")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        backend = BackendProcess(name, 0, proc)
        started.append(backend)
        backend.port = _read_port(proc, name, within=10.0)
        wait_until(lambda: _port_answers(backend.port), f"backend {name} to accept", 10.0)
        return backend

    try:
        yield start
    finally:
        for backend in started:
            with contextlib.suppress(Exception):
                backend.kill()
            if backend.proc.stdout is not None:
                backend.proc.stdout.close()


# -- tables ---------------------------------------------------------------------------------


def health(**overrides: Any) -> HealthSettings:
    """Fast HTTP health checks on /healthz (interval 0.05 s) unless overridden."""
    settings: dict[str, Any] = {
        "path": "/healthz",
        "interval": 0.05,
        "timeout": 1.0,
        "healthy_threshold": 1,
        "unhealthy_threshold": 1,
    }
    settings.update(overrides)
    return HealthSettings(**settings)


def node(
    *backends: BackendProcess,
    min_healthy: int = 1,
    access: AccessRule | None = None,
    prefix_rewrite: bool = False,
    **health_overrides: Any,
) -> NodeEntry:
    return NodeEntry(
        endpoints=tuple(b.endpoint() for b in backends),
        min_healthy=min_healthy,
        health=health(**health_overrides),
        access=access,
        prefix_rewrite=prefix_rewrite,
    )


def alias(
    *targets: tuple[str, int],
    affinity_header: str | None = None,
    access: AccessRule | None = None,
    prefix_rewrite: bool = False,
) -> AliasEntry:
    return AliasEntry(tuple(targets), affinity_header, access, prefix_rewrite)


# -- the balancer ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class BalancerHarness:
    """A Balancer serving on its own loop in a background thread."""

    table_file: Path
    settings: ProxySettings
    admin_token: str | None = None  # sent with every admin() request when set
    token: str | None = None  # with one, tables may also be pushed (balancer/push.py)
    loop: asyncio.AbstractEventLoop = field(init=False)
    balancer: Balancer = field(init=False)
    thread: threading.Thread = field(init=False)
    port: int = 0
    admin_port: int = 0
    generation: int = 0

    def start(self) -> None:
        self.loop = new_loop()
        self.balancer = Balancer(self.loop, self.table_file, self.settings)
        if self.token is not None:
            self.balancer.extra_routes.extend(push_routes(self.balancer, self.token))
        options = ServeOptions(
            host=HOST,
            port=0,
            admin_host=HOST,
            admin_port=0,  # the balancer binds a free one: no race for it
            admin_token=self.admin_token,
        )
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.balancer.start(options))
            except BaseException as exc:  # reported to the test thread
                failure.append(exc)
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, name="balancer", daemon=True)
        self.thread.start()
        assert started.wait(10), "the balancer did not start within 10 s"
        if failure:
            raise failure[0]
        self.port = self.call(lambda: self.balancer.ports()[0])
        self.admin_port = self.call(lambda: self.balancer.admin_port)
        wait_until(self._admin_answers, "the admin port to answer", 10.0)

    def _admin_answers(self) -> bool:
        try:
            return self.admin("GET", "/-/healthz").status == 200
        except OSError:
            return False

    def stop(self, drain_timeout: float = 0.5) -> None:
        """Shut the balancer down gracefully and end its thread (idempotent)."""
        if self.loop.is_closed():
            return
        if not self.thread.is_alive():
            self.loop.close()
            return
        future = asyncio.run_coroutine_threadsafe(self.balancer.shutdown(drain_timeout), self.loop)
        try:
            future.result(timeout=15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()

    def call(self, function: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run function on the balancer's loop and return its result."""

        async def wrapper() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    # -- HTTP ---------------------------------------------------------------------------

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return request(self.port, "GET", path, headers)

    def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        return request(self.port, method, path, **kwargs)

    def connect(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.port, timeout=timeout)

    def admin(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None
    ) -> Reply:
        if self.admin_token and headers is None:
            headers = {"authorization": f"Bearer {self.admin_token}"}
        return request(self.admin_port, method, path, headers, body, timeout=5.0)

    def status(self) -> dict[str, Any]:
        reply = self.admin("GET", "/-/status")
        assert reply.status == 200, reply.body
        document: dict[str, Any] = reply.json()
        return document

    def status_of(self, node: str) -> dict[str, Any]:
        """`/-/status` with node's detail."""
        reply = self.admin("GET", f"/-/status?node={node}")
        assert reply.status == 200, reply.body
        document: dict[str, Any] = reply.json()
        return document

    def instances(self) -> dict[str, dict[str, Any]]:
        """Every instance in /-/status (draining ones too) by instance name."""
        document = self.status()
        found = {i["instance"]: i for n in document["nodes"] for i in n["instances"]}
        for instance in document["draining"]:
            found.setdefault(instance["instance"], instance)
        return found

    def wait_status(self, expected: dict[str, str], within: float = 5.0) -> None:
        """Wait until each named instance shows the given status in /-/status."""

        def reached() -> bool:
            instances = self.instances()
            return all(instances.get(n, {}).get("status") == s for n, s in expected.items())

        wait_until(reached, f"instance statuses {expected}", within)

    def inflight(self) -> int:
        return sum(i["inflight"] for i in self.instances().values())

    # -- tables ---------------------------------------------------------------------------

    def publish(
        self,
        nodes: dict[str, NodeEntry],
        aliases: dict[str, AliasEntry] | None = None,
        within: float = 5.0,
    ) -> RoutingTable:
        """Write the next generation of the table file and wait until it is served."""
        self.generation += 1
        table = RoutingTable(
            generation=self.generation,
            nodes=MappingProxyType(dict(nodes)),
            aliases=MappingProxyType(dict(aliases or {})),
        )
        write_table(self.table_file, table)
        self.wait_generation(self.generation, within)
        return table

    def wait_generation(self, generation: int, within: float = 5.0) -> None:
        wait_until(
            lambda: self.status()["generation"] == generation,
            f"the balancer to serve generation {generation}",
            within,
        )


@pytest.fixture
def make_balancer(tmp_path: Path) -> Iterator[Callable[..., BalancerHarness]]:
    """Start balancers (table file STATE/proj/routing-table.json); all stop at teardown."""
    harnesses: list[BalancerHarness] = []

    def make(
        settings: ProxySettings | None = None,
        admin_token: str | None = None,
        token: str | None = None,
    ) -> BalancerHarness:
        table_file = tmp_path / f"state{len(harnesses)}" / PROJECT / "routing-table.json"
        harness = BalancerHarness(table_file, settings or ProxySettings(), admin_token, token)
        harnesses.append(harness)
        harness.start()
        return harness

    try:
        yield make
    finally:
        errors = []
        for harness in harnesses:
            try:
                harness.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def balancer(make_balancer: Callable[..., BalancerHarness]) -> BalancerHarness:
    return make_balancer()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start `gitops-nodes serve` processes; each is stopped (SIGTERM, then killed) at teardown."""
    from tests.balancer.served import ServeProcess  # served.py imports this module's helpers

    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        number = len(started)
        process = ServeProcess(tmp_path / f"state{number}", tmp_path / f"serve{number}.log", args)
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()
