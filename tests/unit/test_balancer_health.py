"""Active health checks over real loopback sockets: check_once, thresholds, statuses, tracking."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

import pytest

from balancer import health
from balancer.backends import Backend, Backends
from balancer.health import HealthChecker, check_once, record
from balancer.table import Endpoint, HealthSettings, NodeEntry, RoutingTable

LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])
HOST = "127.0.0.1"
FAST = HealthSettings(
    path="/health",
    interval=0.01,
    timeout=0.5,
    healthy_threshold=2,
    unhealthy_threshold=2,
    start_timeout=30.0,
)


def run(loop_kind: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run scenario on a fresh loop of the kind named: asyncio's own, or uvloop's."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop_kind == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


async def until(condition: Callable[[], bool], what: str, within: float = 1.0) -> None:
    """Poll condition until it holds; fail naming what was awaited after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


class Server:
    """An HTTP server on 127.0.0.1 answering `code`, or `raw` bytes, or nothing when silent."""

    def __init__(self) -> None:
        self.code = 200
        self.raw: bytes | None = None
        self.silent = False
        self.requests: list[bytes] = []
        self.closed_by_client = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self.handle, HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def paths(self) -> list[str]:
        return [r.split(b" ")[1].decode() for r in self.requests]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            if not self.silent:
                reply = self.raw or f"HTTP/1.1 {self.code} X\r\nContent-Length: 0\r\n\r\n".encode()
                writer.write(reply)
                await writer.drain()
            await reader.read()  # the checker must close its end; the server does not
            self.closed_by_client += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_client += 1
        finally:
            writer.close()


@contextmanager
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, and nobody else takes it."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]


def backend_on(port: int, settings: HealthSettings = FAST, instance: str = "i1") -> Backend:
    return Backend("scorer", Endpoint(instance, HOST, port), settings)


def table(generation: int, port: int, settings: HealthSettings) -> RoutingTable:
    entry = NodeEntry((Endpoint("i1", HOST, port),), 1, settings)
    return RoutingTable(generation, MappingProxyType({"scorer": entry}))


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# check_once


def test_http_check_passes_on_200_sends_the_documented_request_and_closes(loop_kind: str) -> None:
    async def scenario() -> None:
        async with Server() as server:
            result = await check_once(HOST, server.port, FAST)
            assert result == (True, True, "GET /health answered 200")
            assert server.requests == [
                f"GET /health HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
                "User-Agent: gitops-nodes-balancer\r\nConnection: close\r\n\r\n".encode()
            ]
            await until(lambda: server.closed_by_client == 1, "the checker to close")

    run(loop_kind, scenario)


@pytest.mark.parametrize(("code", "passed"), [(204, True), (302, True), (404, False), (503, False)])
def test_http_check_passes_on_2xx_and_3xx_only(code: int, passed: bool) -> None:
    async def scenario() -> None:
        async with Server() as server:
            server.code = code
            assert await check_once(HOST, server.port, FAST) == (
                passed,
                True,
                f"GET /health answered {code}",
            )

    run("asyncio", scenario)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", (True, True)),
        (b"SSH-2.0-OpenSSH_9.2\r\n", (False, True)),
        (b"HTTP/1.1 2xx OK\r\n", (False, True)),
        (b"HTTP/1.1 20", (False, True)),  # then the server waits: timeout, connected
    ],
)
def test_http_check_reads_past_interim_responses_and_rejects_garbage(
    raw: bytes, expected: tuple[bool, bool]
) -> None:
    async def scenario() -> None:
        async with Server() as server:
            server.raw = raw
            settings = HealthSettings(path="/health", timeout=0.05)
            passed, connected, detail = await check_once(HOST, server.port, settings)
            assert (passed, connected) == expected, detail

    run("asyncio", scenario)


def test_http_check_reports_a_connection_closed_before_a_status_line() -> None:
    async def scenario() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(hang_up, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            passed, connected, detail = await check_once(HOST, port, FAST)
        finally:
            server.close()
        assert (passed, connected) == (False, True)
        assert "connection closed before a status line" in detail

    run("asyncio", scenario)


def test_http_check_times_out_on_a_silent_server_within_the_timeout(loop_kind: str) -> None:
    async def scenario() -> None:
        async with Server() as server:
            server.silent = True
            settings = HealthSettings(path="/health", timeout=0.05)
            began = time.monotonic()
            passed, connected, detail = await check_once(HOST, server.port, settings)
            assert time.monotonic() - began < 0.5
            assert (passed, connected) == (False, True)
            assert detail == "GET /health timed out after 0.05s waiting for the status line"
            await until(lambda: server.closed_by_client == 1, "the checker to close")

    run(loop_kind, scenario)


def test_refused_connections_fail_unconnected_for_http_and_tcp(loop_kind: str) -> None:
    async def scenario() -> None:
        with refused_port() as port:
            for settings in (FAST, HealthSettings(path=None, timeout=0.5)):
                passed, connected, detail = await check_once(HOST, port, settings)
                assert (passed, connected) == (False, False)
                assert "refused" in detail.lower(), detail

    run(loop_kind, scenario)


def test_tcp_check_passes_when_the_port_listens(loop_kind: str) -> None:
    async def scenario() -> None:
        async with Server() as server:
            result = await check_once(HOST, server.port, HealthSettings(path=None))
            assert result == (True, True, "accepts connections")

    run(loop_kind, scenario)


def test_a_path_that_cannot_go_on_a_request_line_fails_without_connecting() -> None:
    async def scenario() -> None:
        async with Server() as server:
            for path in ("health", "/a b", "/x\r\nHost: evil", "/é"):
                settings = HealthSettings(path=path)
                passed, connected, detail = await check_once(HOST, server.port, settings)
                assert (passed, connected) == (False, False)
                assert "invalid health path" in detail
            assert server.requests == []

    run("asyncio", scenario)


# the status machine, without sockets


def test_record_counts_consecutive_results_against_the_thresholds() -> None:
    backend = backend_on(1)
    record(backend, False, False, "refused", age=0.0)
    assert (backend.status, backend.healthy, backend.last_error) == ("Started", False, "refused")
    record(backend, False, True, "GET /health answered 503", age=0.1)
    assert backend.status == "Preparing"
    record(backend, True, True, "ok", age=0.2)
    assert (backend.status, backend.healthy) == ("Preparing", False)  # 1 of 2 passes
    record(backend, True, True, "ok", age=0.3)
    assert (backend.status, backend.healthy, backend.last_error) == ("Healthy", True, "")
    record(backend, False, True, "answered 500", age=0.4)
    assert (backend.status, backend.healthy, backend.last_error) == (
        "Healthy",
        True,
        "answered 500",
    )
    record(backend, True, True, "ok", age=0.5)  # a pass in between resets the failure count
    record(backend, False, True, "answered 500", age=0.6)
    assert backend.healthy
    record(backend, False, True, "answered 502", age=0.7)
    assert (backend.status, backend.healthy, backend.last_error) == (
        "Unhealthy",
        False,
        "answered 502",
    )
    record(backend, False, False, "refused", age=99.0)
    assert (backend.status, backend.last_error) == ("Unhealthy", "refused")
    record(backend, True, True, "ok", age=99.1)
    assert backend.status == "Unhealthy"  # 1 of 2 passes: no way back to Preparing
    record(backend, True, True, "ok", age=99.2)
    assert backend.status == "Healthy"


def test_record_gives_up_on_a_never_healthy_instance_after_start_timeout() -> None:
    backend = backend_on(1, HealthSettings(start_timeout=10.0))
    record(backend, False, True, "answered 503", age=9.9)
    assert backend.status == "Preparing"
    record(backend, False, True, "answered 503", age=10.0)
    assert (backend.status, backend.healthy) == ("Unhealthy", False)
    assert backend.last_error == "no passing check within 10s: answered 503"


# HealthChecker over real sockets


def test_threshold_passes_make_healthy_failures_unhealthy_and_passes_readmit(
    loop_kind: str,
) -> None:
    async def scenario() -> None:
        async with Server() as server:
            checker = HealthChecker(asyncio.get_running_loop())
            backend = backend_on(server.port)
            checker.track(backend)
            await until(lambda: backend.checked_at > 0, "the first check")
            assert backend.status in ("Preparing", "Healthy")
            await until(lambda: backend.healthy, "Healthy")
            assert backend.status == "Healthy"
            assert len(server.requests) >= FAST.healthy_threshold

            server.code = 503
            seen = len(server.requests)
            await until(lambda: not backend.healthy, "Unhealthy")
            assert backend.status == "Unhealthy"
            assert backend.last_error == "GET /health answered 503"
            assert len(server.requests) - seen >= FAST.unhealthy_threshold

            server.code = 200
            await until(lambda: backend.healthy, "readmission")
            assert (backend.status, backend.last_error) == ("Healthy", "")
            await checker.aclose()

    run(loop_kind, scenario)


def test_a_closed_port_stays_started_then_turns_unhealthy_after_start_timeout(
    loop_kind: str,
) -> None:
    async def scenario() -> None:
        settings = HealthSettings(path="/health", interval=0.01, timeout=0.5, start_timeout=0.08)
        with refused_port() as port:
            checker = HealthChecker(asyncio.get_running_loop())
            backend = backend_on(port, settings)
            checker.track(backend)
            await until(lambda: backend.checked_at > 0, "the first check")
            assert (backend.status, backend.healthy) == ("Started", False)
            assert "refused" in backend.last_error.lower()
            await until(lambda: backend.status != "Started", "start_timeout")
            assert (backend.status, backend.healthy) == ("Unhealthy", False)
            assert backend.last_error.startswith("no passing check within 0.08s")
            await checker.aclose()

    run(loop_kind, scenario)


def test_a_port_that_answers_but_fails_is_preparing_then_unhealthy() -> None:
    async def scenario() -> None:
        settings = HealthSettings(path="/health", interval=0.01, timeout=0.5, start_timeout=0.08)
        async with Server() as server:
            server.code = 503
            checker = HealthChecker(asyncio.get_running_loop())
            backend = backend_on(server.port, settings)
            checker.track(backend)
            await until(lambda: backend.checked_at > 0, "the first check")
            assert backend.status == "Preparing"
            await until(lambda: backend.status != "Preparing", "start_timeout")
            assert backend.status == "Unhealthy"
            await checker.aclose()

    run("asyncio", scenario)


def test_tcp_check_on_the_health_port_makes_healthy(loop_kind: str) -> None:
    async def scenario() -> None:
        async with Server() as server:
            with refused_port() as traffic_port:
                settings = HealthSettings(path=None, port=server.port, interval=0.01)
                checker = HealthChecker(asyncio.get_running_loop())
                backend = backend_on(traffic_port, settings)
                checker.track(backend)
                await until(lambda: backend.healthy, "Healthy")
                assert backend.status == "Healthy"
                await checker.aclose()

    run(loop_kind, scenario)


def test_an_ejected_backend_is_readmitted_by_threshold_passes() -> None:
    async def scenario() -> None:
        async with Server() as server:
            checker = HealthChecker(asyncio.get_running_loop())
            backend = backend_on(server.port)
            checker.track(backend)
            await until(lambda: backend.healthy, "Healthy")
            backend.eject("connection reset by upstream")
            assert (backend.healthy, backend.status, backend.passes) == (False, "Unhealthy", 0)
            seen = len(server.requests)
            await until(lambda: backend.healthy, "readmission")
            assert backend.status == "Healthy"
            assert len(server.requests) - seen >= FAST.healthy_threshold - 1
            await checker.aclose()

    run("asyncio", scenario)


def test_a_pass_in_flight_during_an_ejection_does_not_readmit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = HealthSettings(path="/health", interval=0.01, healthy_threshold=1)
    backend = backend_on(1, settings)
    healthy_at_each_check: list[bool] = []

    async def passes_and_ejects_on_the_second(*args: Any) -> tuple[bool, bool, str]:
        healthy_at_each_check.append(backend.healthy)
        if len(healthy_at_each_check) == 2:
            backend.eject("connection reset")  # the proxy ejects while this check runs
        return True, True, "GET /health answered 200"

    monkeypatch.setattr(health, "check_once", passes_and_ejects_on_the_second)

    async def scenario() -> None:
        checker = HealthChecker(asyncio.get_running_loop())
        checker.track(backend)
        await until(lambda: len(healthy_at_each_check) >= 4, "four checks")
        await checker.aclose()

    run("asyncio", scenario)
    assert healthy_at_each_check[:4] == [False, True, False, True]


def test_untrack_stops_checks_and_tracking_twice_is_a_no_op() -> None:
    async def scenario() -> None:
        async with Server() as server:
            checker = HealthChecker(asyncio.get_running_loop())
            backend = backend_on(server.port)
            clock = backend_on(server.port, HealthSettings(path="/clock", interval=0.01), "i2")
            checker.track(backend)
            checker.track(backend)
            checker.track(clock)
            assert len(checker) == 2
            await until(lambda: backend.checked_at > 0, "the first check")
            await until(lambda: server.paths().count("/health") >= 3, "three checks")
            checker.untrack(backend)
            assert backend not in checker and clock in checker
            checked_at, health_checks = backend.checked_at, server.paths().count("/health")
            clock_checks = server.paths().count("/clock")
            await until(lambda: server.paths().count("/clock") >= clock_checks + 3, "the clock")
            assert backend.checked_at == checked_at
            assert server.paths().count("/health") <= health_checks + 1  # one may be in flight
            checker.untrack(backend)  # untracking twice is harmless too
            await checker.aclose()

    run("asyncio", scenario)


def test_a_removed_backend_stops_being_checked_and_keeps_deleting() -> None:
    async def scenario() -> None:
        async with Server() as server:
            registry = Backends()
            added, _ = registry.reconcile(table(1, server.port, FAST))
            checker = HealthChecker(asyncio.get_running_loop())
            checker.track(added[0])
            await until(lambda: added[0].healthy, "Healthy")
            _, removed = registry.reconcile(RoutingTable(2))
            assert removed == added
            await until(lambda: added[0] not in checker, "the checks to stop")
            assert (added[0].status, added[0].healthy) == ("Deleting", False)
            checker.track(added[0])  # a removed backend is never tracked again
            assert len(checker) == 0
            await checker.aclose()

    run("asyncio", scenario)


def test_health_survives_a_reconcile_that_keeps_the_instance_and_new_settings_apply(
    loop_kind: str,
) -> None:
    async def scenario() -> None:
        async with Server() as server:
            registry = Backends()
            added, _ = registry.reconcile(table(1, server.port, FAST))
            checker = HealthChecker(asyncio.get_running_loop())
            for backend in added:
                checker.track(backend)
            backend = added[0]
            await until(lambda: backend.healthy, "Healthy")

            new_settings = HealthSettings(path="/v2/health", interval=0.01, healthy_threshold=2)
            added_again, removed = registry.reconcile(table(2, server.port, new_settings))
            assert (added_again, removed) == ([], [])
            assert registry.by_key[backend.key] is backend
            assert (backend.healthy, backend.status) == (True, "Healthy")
            await until(lambda: "/v2/health" in server.paths(), "a check with the new path")
            assert backend.healthy and backend in checker
            await checker.aclose()

    run(loop_kind, scenario)


def test_a_check_that_raises_does_not_stop_the_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    real = health.check_once
    calls = 0

    async def flaky(*args: Any) -> tuple[bool, bool, str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug")
        return await real(*args)

    monkeypatch.setattr(health, "check_once", flaky)

    async def scenario() -> None:
        async with Server() as server:
            checker = HealthChecker(asyncio.get_running_loop())
            backend = backend_on(server.port)
            checker.track(backend)
            await until(lambda: backend.checked_at > 0, "the first check")
            assert backend.last_error == "check error: bug"
            await until(lambda: backend.healthy, "Healthy")
            await checker.aclose()

    run("asyncio", scenario)


def test_close_cancels_every_check_and_later_tracks_are_ignored() -> None:
    async def scenario() -> None:
        with refused_port() as port:
            checker = HealthChecker(asyncio.get_running_loop())
            backends = [backend_on(port, FAST, f"i{n}") for n in range(20)]
            for backend in backends:
                checker.track(backend)
            tasks = {t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("health")}
            assert len(tasks) == 20
            await checker.aclose()
            assert len(checker) == 0 and all(t.done() for t in tasks)
            checker.track(backends[0])
            assert len(checker) == 0

    run("asyncio", scenario)


def test_sync_close_works_without_awaiting() -> None:
    async def scenario() -> None:
        with refused_port() as port:
            checker = HealthChecker(asyncio.get_running_loop())
            checker.track(backend_on(port))
            checker.close()
            assert len(checker) == 0
            await asyncio.sleep(0)  # let the cancellation land before the loop closes

    run("asyncio", scenario)
