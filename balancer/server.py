"""One balancer process: the data plane, the control plane, health checks and table reloads.

`Balancer.swap()` is the only place a routing table comes in, from the state file (followed
with watchfiles), handed over in-process, or pushed to the admin port (balancer/push.py);
the new Router replaces the old one in one assignment. A table whose nodes say `discover`
goes through balancer/discovery.py first, which adds the instances DNS finds. Signals belong
to whoever runs the process (`run()` here, or the watch loop): uvicorn serves the control
plane without installing handlers of its own. With `--workers N`, `run()` forks N such
processes on one data port; worker 0 alone binds the admin port and answers it for all of
them (balancer/workers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
import watchfiles

from balancer.access import AdminGuard, admin_guard
from balancer.admin_http import ADMIN_MAX_CONNECTIONS, protocol_for
from balancer.backends import Backend, Backends
from balancer.client import ClientConnection
from balancer.console import Console
from balancer.control import NodeDetail, make_control_app, worker_snapshot
from balancer.discovery import Discovery
from balancer.health import HealthChecker
from balancer.http import authority
from balancer.metrics import Metrics
from balancer.proxy import Proxy, ProxySettings
from balancer.routing import Affinity, Router
from balancer.settings import SettingsError
from balancer.table import Endpoint, RoutingTable, TableError, read_table
from balancer.telemetry import Telemetry
from balancer.workers import Peers, SnapshotServer, WorkerSet

log = logging.getLogger("gitops_nodes.balancer")

SWEEP_INTERVAL = 1.0


@dataclass(frozen=True)
class ServeOptions:
    """Where and how one balancer process listens."""

    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    reuse_port: bool = False
    drain_timeout: float = 30.0
    # The admin port's key (required beyond loopback); never shown in a repr or a log.
    admin_token: str | None = field(default=None, repr=False)
    # One of several processes on the data port (serve --workers N): which one, and where
    # they tell worker 0 their counts. Only worker 0 binds the admin port.
    workers: WorkerSet | None = None

    def __post_init__(self) -> None:
        for option, port in (("--port", self.port), ("--admin-port", self.admin_port)):
            if not 0 <= port <= 65535:
                raise SettingsError(f"{option}: expected a port from 0 to 65535, got {port}")


class Balancer:
    """The data plane, control plane and health checks of one process, sharing one loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        table_file: Path | None = None,
        settings: ProxySettings | None = None,
        follow_file: bool = True,
    ) -> None:
        self.loop = loop
        self.table_file = table_file
        # Embedded in the watch loop, tables are handed over in-process instead.
        self.follow = follow_file
        self.extra_routes: list[Any] = []
        self.extra_status: Any = None
        self.open_paths: set[str] = set()  # admin paths that check a token of their own
        self.console = Console()  # the web console; the embedder registers its actions
        self.node_detail: NodeDetail | None = None  # a node's spec and logs, from the embedder
        self.backends = Backends()
        self.metrics = Metrics(inflight=self._inflight_by_node)
        self.telemetry = Telemetry()  # the instances' own metrics, scraped with /-/metrics
        self.affinity = Affinity()
        self.proxy = Proxy(
            loop, Router(RoutingTable(), self.backends), self.affinity, self.metrics, settings
        )
        self.proxy.on_drained = self._drained
        self.checker = HealthChecker(loop, on_change=self._health_changed)
        self.discovery = Discovery(loop, self._serve, self._endpoint_healthy)
        self.started_at = time.time()
        self.reloads = 0
        self.last_reload_error: str | None = None
        self.draining = False
        self._servers: list[asyncio.Server] = []
        self._admin: _EmbeddedServer | None = None
        self._snapshots: SnapshotServer | None = None
        self.admin_port = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()

    # -- routing tables -------------------------------------------------------------------

    def swap(self, table: RoutingTable) -> None:
        """Serve table from now on; requests in flight finish on what they started with."""
        if self.discovery.active or any(e.discover for e in table.nodes.values()):
            self.discovery.declare(table)  # serves it, with the instances DNS finds
            return
        self._serve(table)

    def _serve(self, table: RoutingTable) -> None:
        added, removed = self.backends.reconcile(table)
        for backend in added:
            self.checker.track(backend)
        for backend in removed:
            self.checker.untrack(backend)
        self.proxy.router = Router(table, self.backends)  # the swap: one assignment
        self.backends.forget([b for b in removed if b.inflight == 0])
        self.reloads += 1
        self.last_reload_error = None
        self.metrics.retain(table.nodes, table.aliases)
        self.metrics.reloaded(table.generation)
        self.write_ack()
        log.info(
            "routing table generation %d: %d nodes, %d aliases, %d instances added, %d removed",
            table.generation,
            len(table.nodes),
            len(table.aliases),
            len(added),
            len(removed),
        )

    @property
    def limits(self) -> dict[str, float | int]:
        """The client limits this process enforces, for `/-/status`."""
        return self.proxy.settings.limits()

    @property
    def router(self) -> Router:
        """The current routing table, compiled; requests read it once at their start."""
        return self.proxy.router

    def reload_file(self) -> bool:
        """Load the table file; a malformed one is logged and the current table keeps serving."""
        if self.table_file is None:
            return False
        try:
            table = read_table(self.table_file)
        except TableError as exc:
            self.last_reload_error = str(exc)
            self.metrics.rejected_reload()
            log.error(
                "routing table rejected, still serving generation %d: %s",
                self.router.generation,
                exc,
            )
            return False
        if table is None:
            return False
        if table.generation == self.router.generation and table == self.router.table:
            return False
        self.swap(table)
        return True

    async def follow_file(self) -> None:
        """Reload whenever the table file is replaced (watchfiles, debounced)."""
        assert self.table_file is not None
        folder = self.table_file.parent
        folder.mkdir(parents=True, exist_ok=True)
        name = self.table_file.name
        async for _ in watchfiles.awatch(
            folder,
            watch_filter=lambda _change, path: Path(path).name == name,
            stop_event=self._stop,
            debounce=50,
            step=20,
            recursive=False,
        ):
            self.reload_file()

    # -- draining acknowledgements ----------------------------------------------------------

    def _drained(self, backend: Backend) -> None:
        self.backends.forget([backend])
        self.write_ack()

    def _health_changed(self, _backend: Backend) -> None:
        self.write_ack()
        self.discovery.refresh()  # a node's new instance turning Healthy ends a hold

    def _endpoint_healthy(self, endpoint: Endpoint) -> bool:
        backend = self.backends.by_key.get((endpoint.instance, endpoint.host, endpoint.port))
        return backend is not None and backend.healthy

    def given_table(self) -> RoutingTable:
        """The table as it was given (pushed or read), without the instances DNS added."""
        return self.discovery.declared or self.proxy.router.table

    def ack_document(self) -> dict[str, Any]:
        """What apply waits on: the generation served, the instances counted Healthy, and
        the removed ones with requests still in flight."""
        return {
            "pid": os.getpid(),
            "generation": self.router.generation,
            "draining": {b.instance: b.inflight for b in self.backends.draining()},
            "healthy": sorted(b.instance for b in self.backends.by_key.values() if b.healthy),
        }

    def write_ack(self) -> None:
        """Tell apply which table generation this process serves and what is still draining."""
        if self.table_file is None or not self._servers:
            return  # not listening yet: start() reports once it is
        folder = self.table_file.parent / "balancers"
        folder.mkdir(parents=True, exist_ok=True)
        ack = self.ack_document()
        fd, temp = tempfile.mkstemp(prefix=".ack.", dir=folder)
        with os.fdopen(fd, "w") as handle:
            # dumps, not dump: dump always takes the pure-Python encoder, whose closures are
            # reference cycles left for a full collection (gitops_nodes/watch/reconcile.py).
            handle.write(json.dumps(ack))
        os.replace(temp, folder / f"{os.getpid()}.json")

    def _remove_ack(self) -> None:
        if self.table_file is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.table_file.parent / "balancers" / f"{os.getpid()}.json").unlink()

    def _inflight_by_node(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for backend in self.backends.by_key.values():
            counts[backend.node] = counts.get(backend.node, 0) + backend.inflight
        return counts

    # -- serving --------------------------------------------------------------------------

    async def start(self, options: ServeOptions) -> None:
        """Listen on the data and admin ports and start checks, reloads and the sweeper.

        Raises AccessConfigError, before listening, for an admin port beyond loopback
        without a key."""
        admin = admin_guard(options.admin_host, options.admin_token)
        raise_open_files(self.proxy.settings.max_clients)
        if self.table_file is not None:
            self.reload_file()
            if self.follow:
                self._tasks.append(self.loop.create_task(self.follow_file()))
        try:
            server = await self.loop.create_server(
                lambda: ClientConnection(self.proxy),
                options.host,
                options.port,
                reuse_port=options.reuse_port or None,
                backlog=4096,
            )
        except OSError as exc:  # an address not of this host, a port in use or privileged
            raise SettingsError(cannot_listen("--host", options.host, options.port, exc)) from None
        self._servers.append(server)
        workers = options.workers
        peers: Peers | None = None
        if workers is not None:
            index = workers.index
            self._snapshots = SnapshotServer(
                workers.socket_path(index), lambda: worker_snapshot(self, index)
            )
            await self._snapshots.start()
            peers = Peers(workers, lambda: worker_snapshot(self, index))
        if workers is None or workers.answers_admin:
            await self._serve_admin(options, admin, peers)
            # The ports bound, which differ from those asked for when port 0 was.
            log.info(
                "listening on http://%s (control plane: http://%s/-/status)",
                authority(options.host, self.ports()[0]),
                authority(options.admin_host, self.admin_port),
            )
        self._tasks.append(self.loop.create_task(self._sweep()))
        self.write_ack()

    async def _serve_admin(
        self, options: ServeOptions, admin: AdminGuard | None, peers: Peers | None
    ) -> None:
        config = uvicorn.Config(
            make_control_app(
                self,
                self.extra_routes,
                self.extra_status,
                admin,
                self.open_paths,
                self.telemetry,
                peers,
                self.console,
                self.node_detail,
            ),
            log_level="warning",
            lifespan="off",
            access_log=False,
            # Bounded like the data port (see balancer/admin_http.py): this process serves both.
            http=protocol_for(self.proxy.settings.header_timeout),
            h11_max_incomplete_event_size=self.proxy.settings.max_head,
            limit_concurrency=ADMIN_MAX_CONNECTIONS,
            # No logging set-up of uvicorn's own: its records go through the process's
            # handlers, in the one format of --log-format.
            log_config=None,
        )
        self._admin = _EmbeddedServer(config)
        # Never SO_REUSEPORT: one process answers the admin port, for all the workers.
        try:
            admin_socket = _bind(options.admin_host, options.admin_port)
        except OSError as exc:
            why = cannot_listen("--admin-host", options.admin_host, options.admin_port, exc)
            raise SettingsError(why) from None
        self.admin_port = admin_socket.getsockname()[1]  # the one bound, for port 0
        self._tasks.append(self.loop.create_task(self._admin.serve(sockets=[admin_socket])))

    def ports(self) -> list[int]:
        return [s.sockets[0].getsockname()[1] for s in self._servers if s.sockets]

    async def _sweep(self) -> None:
        while not self._stop.is_set():
            self.proxy.sweep()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SWEEP_INTERVAL)

    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler)."""
        self._stop.set()

    async def serve_until_stopped(self, options: ServeOptions) -> None:
        try:
            await self.start(options)
        except BaseException:
            # What start began ends with it: the table file's watcher runs in a worker thread
            # that, left waiting, would keep the process from exiting after the error.
            await self.shutdown(0)
            raise
        await self._stop.wait()
        await self.shutdown(options.drain_timeout)

    async def shutdown(self, drain_timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout), then close."""
        self._stop.set()
        self.draining = True
        for server in self._servers:
            server.close()
        self.proxy.close_idle_clients()
        deadline = self.loop.time() + drain_timeout
        while self.proxy.inflight() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)  # polling in-flight counts against a deadline
            self.proxy.close_idle_clients()
        for client in list(self.proxy.clients):
            client.close()
        if self._admin is not None:
            self._admin.should_exit = True
        if self._snapshots is not None:
            self._snapshots.close()
        await self.discovery.aclose()
        self.checker.close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        self._remove_ack()


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process's owner decides about signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def raise_open_files(max_clients: int) -> None:
    """Raise the soft limit of open files towards what max_clients needs (a client and an
    instance connection each, plus room), up to the hard limit: a default soft limit of 1024
    would otherwise fail accepts long before the documented limit answers 503."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * max_clients + 1024
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < max_clients + 64:
            log.warning(
                "open files are limited to %d: fewer than --max-clients %d connections will be "
                "accepted; raise the limit (ulimit -n) or lower --max-clients",
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                max_clients,
            )


def cannot_listen(option: str, host: str, port: int, exc: OSError) -> str:
    """What to tell a user whose address or port cannot be listened on."""
    why = exc.strerror or str(exc)
    return f"cannot listen on {host}:{port} ({option} and its port): {why}"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (the data plane was measured on it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(table_file: Path, options: ServeOptions, settings: ProxySettings, workers: int = 1) -> int:
    """Serve until SIGTERM or SIGINT; with workers > 1, that many processes share the data
    port and worker 0 answers the admin port for all of them. When a worker fails, the
    others are stopped too (a balancer with a part of its workers is not what was asked)."""
    if workers <= 1:
        return _run_one(table_file, options, settings)
    if options.port == 0:  # each would bind a port of its own, and clients reach one of them
        raise SettingsError(
            f"--port 0 with --workers {workers}: the workers share one port; give it"
        )
    # The workers' snapshot sockets: a folder only this user can enter (mkdtemp's 0700).
    folder = Path(tempfile.mkdtemp(prefix="gitops-nodes-workers-"))
    children: list[int] = []
    try:
        for index in range(workers):
            one = ServeOptions(
                **{
                    **options.__dict__,
                    "reuse_port": True,
                    "workers": WorkerSet(folder, workers, index),
                }
            )
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    code = _run_one(table_file, one, settings)
                except SettingsError as exc:  # said here: os._exit would swallow it
                    log.error("worker %d: %s", index, exc)
                finally:
                    os._exit(code)
            children.append(pid)

        def forward(signum: int, _frame: object) -> None:
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        code = 0
        running = set(children)
        while running:
            pid, status = os.wait()
            if pid not in running:
                continue
            running.discard(pid)
            exit_code = os.waitstatus_to_exitcode(status)
            if exit_code and not code:
                log.error("worker %d exited with %d: stopping the others", pid, exit_code)
                code = exit_code
                forward(signal.SIGTERM, None)
        return code
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_one(table_file: Path, options: ServeOptions, settings: ProxySettings) -> int:
    loop = new_loop()
    asyncio.set_event_loop(loop)
    balancer = Balancer(loop, table_file, settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, balancer.stop)
    try:
        loop.run_until_complete(balancer.serve_until_stopped(options))
    finally:
        loop.close()
    return 0
