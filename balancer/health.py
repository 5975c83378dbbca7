"""Active health checks: decide which instances are Healthy, on the balancer's event loop.

One asyncio task per tracked Backend, no threads. Each round reads `backend.settings` afresh
(a table swap may change them), runs `check_once` (a TCP connect, or `GET <path>` where a 2xx
or 3xx status line passes) and moves the Backend between DESIGN.md's statuses:

    Started    the port refuses connections and the instance was never Healthy
    Preparing  the port accepts, but the check has not passed `healthy_threshold` times yet
    Healthy    `healthy_threshold` consecutive passes (also how an ejected instance returns)
    Unhealthy  `unhealthy_threshold` consecutive failures of a Healthy instance, or no pass
               within `start_timeout` seconds of tracking

State lives on the Backend, which outlives routing tables, so a swap never resets it. A
removed Backend is left to the drain (status Deleting) and its checks stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import cast

from balancer.backends import Backend
from balancer.http import authority
from balancer.table import HealthSettings

__all__ = ["USER_AGENT", "HealthChecker", "check_once", "record"]

USER_AGENT = "gitops-nodes-balancer"
STATUS_LINE_LIMIT = 8192  # bytes read looking for a status line (and past 1xx responses)

log = logging.getLogger(__name__)

Result = tuple[bool, bool, str]  # (passed, connected, detail)


def _request(host: str, port: int, path: str) -> bytes:
    """The check's request; ValueError for a path that cannot go on a request line."""
    printable = path.isascii() and all(" " < c < "\x7f" for c in path)
    if not path.startswith("/") or not printable:
        raise ValueError(f"invalid health path {path!r}")
    return (
        f"GET {path} HTTP/1.1\r\nHost: {authority(host, port)}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")


def _status_code(line: bytes) -> int:
    """The status code of an HTTP/1.x status line; ValueError when it is not one."""
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"malformed status line {line[:80]!r}")
    code = parts[1]
    if len(code) != 3 or not code.isdigit():
        raise ValueError(f"malformed status line {line[:80]!r}")
    return int(code)


class _Check(asyncio.Protocol):
    """One check's connection: sends the request (if any), resolves with the final status."""

    __slots__ = ("buffer", "request", "status", "transport")

    def __init__(self, request: bytes | None, status: asyncio.Future[tuple[int, str]]) -> None:
        self.request = request
        self.status = status  # (code, "") or (0, why there is no status line)
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's; a stream connection can write.
        self.transport = cast(asyncio.Transport, transport)
        if self.request is not None:
            self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.status.done():
            return
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > STATUS_LINE_LIMIT:
                    self._resolve(0, "no status line in the first 8 KiB")
                return
            try:
                code = _status_code(bytes(buffer[:end]))
            except ValueError as exc:
                self._resolve(0, str(exc))
                return
            if code >= 200 or code == 101:
                self._resolve(code, "")
                return
            # An interim response (100 Continue, 103 Early Hints): skip it and its headers.
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                if len(buffer) > STATUS_LINE_LIMIT:
                    self._resolve(0, "interim response headers over 8 KiB")
                return
            del buffer[: head_end + 4]

    def eof_received(self) -> bool | None:
        self._resolve(0, "connection closed before a status line")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {_describe(exc)}" if exc is not None else ""
        self._resolve(0, f"connection closed before a status line{reason}")

    def _resolve(self, code: int, detail: str) -> None:
        if not self.status.done():
            self.status.set_result((code, detail))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)  # asyncio's own messages name neither cause nor errno
    return str(exc) or type(exc).__name__


async def check_once(host: str, port: int, settings: HealthSettings) -> Result:
    """Check an instance once: (passed, connected, detail); never raises for a failed check.

    Without a path, passing means a TCP connection to host:port opens within settings.timeout.
    With one, a fresh connection sends `GET <path>` and the status line must arrive within
    settings.timeout (connect included) and be 2xx or 3xx. The connection is always closed.
    """
    loop = asyncio.get_running_loop()
    path = settings.path
    try:
        request = None if path is None else _request(host, port, path)
    except ValueError as exc:
        return False, False, str(exc)
    what = "connect" if path is None else f"GET {path}"
    status: asyncio.Future[tuple[int, str]] = loop.create_future()
    protocol = _Check(request, status)
    try:
        async with asyncio.timeout(settings.timeout):
            await loop.create_connection(lambda: protocol, host, port)
            if path is None:
                return True, True, "accepts connections"
            code, problem = await status
    except TimeoutError:
        connected = protocol.transport is not None
        stage = "waiting for the status line" if connected else "connecting"
        return False, connected, f"{what} timed out after {settings.timeout:g}s {stage}"
    except (OSError, ValueError, OverflowError) as exc:
        return False, False, f"{what} failed: {_describe(exc)}"
    finally:
        if protocol.transport is not None:
            protocol.transport.close()
    if code == 0:
        return False, True, f"{what}: {problem}"
    return 200 <= code < 400, True, f"{what} answered {code}"


class HealthChecker:
    """Checks every tracked Backend every `settings.interval` seconds and sets its status."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[Backend], None] | None = None,
    ) -> None:
        self.loop = loop
        self.on_change = on_change  # told when a backend enters or leaves balancing
        self.closed = False
        self._tasks: dict[Backend, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, backend: object) -> bool:
        return backend in self._tasks

    def track(self, backend: Backend) -> None:
        """Start checking backend: once now, then every interval. No-op if already tracked,
        removed, or after close()."""
        if self.closed or backend.removed or backend in self._tasks:
            return
        task = self.loop.create_task(
            self._run(backend, self.loop.time()), name=f"health {backend.node}/{backend.instance}"
        )
        self._tasks[backend] = task
        task.add_done_callback(lambda done: self._finished(backend, done))

    def untrack(self, backend: Backend) -> None:
        """Stop checking backend; its health state stays as it is."""
        task = self._tasks.pop(backend, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        """Stop every check (cancellation completes on the loop's next iterations)."""
        self.closed = True
        tasks, self._tasks = self._tasks, {}
        for task in tasks.values():
            task.cancel()

    async def aclose(self) -> None:
        """close(), then wait until every check task has finished."""
        tasks = list(self._tasks.values())
        self.close()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, backend: Backend, task: asyncio.Task[None]) -> None:
        if self._tasks.get(backend) is task:
            del self._tasks[backend]
        if not task.cancelled() and task.exception() is not None:
            log.error("health checks of %r stopped", backend, exc_info=task.exception())

    async def _run(self, backend: Backend, began: float) -> None:
        loop = self.loop
        while not backend.removed:
            settings = backend.settings
            started = loop.time()
            was_healthy = backend.healthy
            try:
                passed, connected, detail = await check_once(
                    backend.host, settings.port or backend.port, settings
                )
            except Exception as exc:  # a bug must not end this backend's checks
                log.exception("health check of %r raised", backend)
                passed, connected, detail = False, False, f"check error: {_describe(exc)}"
            if backend.removed:
                return
            now = loop.time()
            backend.checked_at = now
            # Ejected while this check was in flight: its pass predates the ejection.
            if not (passed and was_healthy and not backend.healthy):
                record(backend, passed, connected, detail, now - began)
            if backend.healthy != was_healthy and self.on_change is not None:
                self.on_change(backend)
            # Start to start, so a slow check does not stretch the interval; no catching up.
            delay = backend.settings.interval - (loop.time() - started)
            await asyncio.sleep(max(delay, 0.0))


def record(backend: Backend, passed: bool, connected: bool, detail: str, age: float) -> None:
    """Apply one check's outcome to backend; age is seconds since its tracking began."""
    settings = backend.settings
    if passed:
        backend.fails = 0
        backend.passes += 1
        if backend.healthy:
            backend.last_error = ""
        elif backend.passes >= max(1, settings.healthy_threshold):
            backend.mark_healthy()
        elif backend.status in ("Started", "Preparing"):
            backend.status = "Preparing"
        return
    backend.passes = 0
    backend.fails += 1
    backend.last_error = detail
    if backend.healthy:
        if backend.fails >= max(1, settings.unhealthy_threshold):
            backend.mark_unhealthy(detail)
    elif backend.status in ("Started", "Preparing"):
        if age >= settings.start_timeout:
            backend.mark_unhealthy(f"no passing check within {settings.start_timeout:g}s: {detail}")
        else:
            backend.status = "Preparing" if connected else "Started"
