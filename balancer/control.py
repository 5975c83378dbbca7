"""The balancer's control plane: `/-/healthz`, `/-/status` and `/-/metrics` as a Starlette app.

It runs in the data plane's event loop (uvicorn on the admin port) and only reads: the current
Router once per request, the Backends registry and the Metrics. Everything it shows is built by
pure functions (`status_document`, `node_status`), testable without HTTP. With an admin key
(required beyond loopback, balancer/access.py), every endpoint but the open ones (`/-/healthz`,
and those that check a token of their own) answers 401 to a request without it.

Each node carries its recent traffic (requests/s, error rate, p50/p99 over the last seconds,
balancer/console/traffic.py); `/-/status?node=NAME` adds that node's detail from the embedder
(its spec as applied, its instances' recent log lines) and its telemetry; `/-/status/stream`
sends the same document as server-sent events whenever it changes. The web console
(balancer/console/) is built on these alone.

Under `serve --workers N` the worker answering the admin port adds the others' counts
(balancer/workers.py) with `worker_snapshot`, `combined_metrics` and `with_workers`, so both
endpoints answer for all the workers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from balancer.access import CHALLENGE, AdminGuard
from balancer.backends import Backend, BackendKey, Backends
from balancer.console import UI, Console, SecurityHeaders, is_open, wants_page
from balancer.console.traffic import TrafficWindow, counts_from
from balancer.metrics import CONTENT_TYPE, FAMILIES, Metrics
from balancer.routing import Router
from balancer.table import AccessRule
from balancer.telemetry import Telemetry
from balancer.workers import Peers, PeerSnapshot, Snapshot

log = logging.getLogger(__name__)

# Instance statuses that only a health check (or a passive ejection) sets.
_CHECKED = frozenset({"Healthy", "Unhealthy"})
# How often /-/status/stream looks for a change, and how long it stays quiet at most (a
# comment line keeps proxies and the browser from taking the stream for dead).
STREAM_EVERY = 0.5
STREAM_HEARTBEAT = 15.0
# Telemetry lines shown per instance on a node's detail.
TELEMETRY_LINES = 200
NodeDetail = Callable[[str], Awaitable[dict[str, Any] | None]]


class ControlSource(Protocol):
    """What the control plane reads from the running balancer (attributes or properties)."""

    @property
    def router(self) -> Router: ...
    @property
    def backends(self) -> Backends: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def started_at(self) -> float: ...  # time.time() at start
    @property
    def reloads(self) -> int: ...
    @property
    def last_reload_error(self) -> str | None: ...
    @property
    def draining(self) -> bool: ...  # shutting down: finishing in-flight requests
    @property
    def limits(self) -> dict[str, float | int]: ...  # the client limits (ProxySettings.limits)


def _checked(backend: Backend) -> bool:
    return backend.checked_at > 0 or backend.status in _CHECKED


def node_status(backends: Iterable[Backend], min_healthy: int) -> str:
    """A node's status from its instances: Created until one of them has been checked, then
    Healthy when at least min_healthy (and at least one) are Healthy, else Unhealthy."""
    members = list(backends)
    if not any(_checked(b) for b in members):
        return "Created"
    healthy = sum(1 for b in members if b.healthy)
    return "Healthy" if healthy >= min_healthy and healthy > 0 else "Unhealthy"


def _instance(backend: Backend) -> dict[str, Any]:
    return {
        "instance": backend.instance,
        "address": f"{backend.host}:{backend.port}",
        "status": backend.status,
        "inflight": backend.inflight,
        "lastError": backend.last_error or None,
    }


def status_document(source: ControlSource, traffic: TrafficWindow | None = None) -> dict[str, Any]:
    """The `/-/status` JSON: the table's generation, every alias, node and instance with its
    status, weight and in-flight count, each node's recent traffic (with traffic), and the
    removed instances still draining."""
    router = source.router  # once: everything below describes this one table
    table = router.table
    nodes: list[dict[str, Any]] = []
    statuses: dict[str, str] = {}
    for name in sorted(table.nodes):
        entry = table.nodes[name]
        route = router.nodes.get(name)
        members: dict[BackendKey, Backend] = (
            {b.key: b for b in route.backends} if route is not None else {}
        )
        instances: list[dict[str, Any]] = []
        for endpoint in entry.endpoints:
            backend = members.get((endpoint.instance, endpoint.host, endpoint.port))
            if backend is None:  # in the table but never registered: nothing to route to
                instances.append(
                    {
                        "instance": endpoint.instance,
                        "address": f"{endpoint.host}:{endpoint.port}",
                        "status": "Undefined",
                        "inflight": 0,
                        "lastError": None,
                    }
                )
            else:
                instances.append(_instance(backend))
        status = statuses[name] = (
            "Suspended" if entry.suspended else node_status(members.values(), entry.min_healthy)
        )
        nodes.append(
            {
                "name": name,
                "status": status,
                "minHealthy": entry.min_healthy,
                "access": _access(entry.access),
                "timeouts": {"request": entry.timeouts.request, "idle": entry.timeouts.idle},
                "instances": instances,
                "traffic": (traffic or TrafficWindow()).figures(name),
            }
        )
    aliases = [
        {
            "name": name,
            "affinityHeader": table.aliases[name].affinity_header,
            "access": _access(table.aliases[name].access),
            "nodes": [
                # A target missing from the table's nodes takes no traffic: Undefined.
                {"node": node, "weight": weight, "status": statuses.get(node, "Undefined")}
                for node, weight in table.aliases[name].targets
            ],
        }
        for name in sorted(table.aliases)
    ]
    draining = [
        {"node": b.node, **_instance(b)}
        for b in sorted(source.backends.draining(), key=lambda b: (b.node, b.instance, b.key))
    ]
    return {
        "generation": router.generation,
        "reloads": source.reloads,
        "lastReloadError": source.last_reload_error,
        "uptimeSeconds": round(max(0.0, time.time() - source.started_at), 3),
        "limits": source.limits,
        "aliases": aliases,
        "nodes": nodes,
        "draining": draining,
    }


def _access(rule: AccessRule | None) -> dict[str, Any] | None:
    """Who may call a private target, by name (digests stay in the table file)."""
    if rule is None:
        return None
    return {"keys": [k.name for k in rule.keys], "folders": list(rule.folders)}


# -- one truth across workers (serve --workers N) ----------------------------------------------


def worker_snapshot(source: ControlSource, index: int) -> Snapshot:
    """What one worker tells the one answering the admin port: its counts, its requests in
    flight (per node, and per instance), and the table it serves."""
    router = source.router
    backends = source.backends
    return {
        "worker": index,
        "pid": os.getpid(),
        "generation": router.generation,
        "reloads": source.reloads,
        "lastReloadError": source.last_reload_error,
        "healthy": sorted({b.instance for b in list(backends.by_key.values()) if b.healthy}),
        "metrics": source.metrics.snapshot(),
        "inflightByNode": inflight_by_node(router, backends),
        "inflight": [
            [b.instance, f"{b.host}:{b.port}", b.inflight]
            for b in list(backends.by_key.values())
            if b.inflight
        ],
    }


def combined_metrics(snapshots: Iterable[Snapshot]) -> str:
    """The balancer's own metrics for all workers: counts summed, in-flight gauges summed."""
    every = list(snapshots)
    inflight: dict[str, int] = {}
    for snapshot in every:
        for node, count in snapshot["inflightByNode"].items():
            inflight[node] = inflight.get(node, 0) + int(count)
    return Metrics.combined(s["metrics"] for s in every).render(lambda: inflight)


def with_workers(
    document: dict[str, Any], own: Snapshot, peers: Sequence[PeerSnapshot]
) -> dict[str, Any]:
    """The `/-/status` of the worker answering, with the others' requests in flight added to
    each instance's and a `workers` list: the table each serves, the instances each counts
    Healthy (every worker checks them itself), and whether it answered."""
    extra: dict[tuple[str, str], int] = {}
    for peer in peers:
        for instance, address, count in (peer.snapshot or {}).get("inflight", ()):
            extra[(instance, address)] = extra.get((instance, address), 0) + int(count)
    if extra:
        every = [i for n in document["nodes"] for i in n["instances"]] + document["draining"]
        for entry in every:
            entry["inflight"] += extra.get((entry["instance"], entry["address"]), 0)
    rows = [(own["worker"], own, True)]
    rows += [(p.index, p.snapshot or {}, p.answered) for p in peers]
    document["workers"] = [
        {
            "worker": index,
            "pid": snapshot.get("pid"),
            "generation": snapshot.get("generation"),
            "reloads": snapshot.get("reloads"),
            "lastReloadError": snapshot.get("lastReloadError"),
            "healthy": snapshot.get("healthy"),
            "answered": answered,
        }
        for index, snapshot, answered in sorted(rows, key=lambda row: row[0])
    ]
    return document


class RequireAdminKey:
    """ASGI middleware: the admin key on every path but the open ones, or a JSON 401."""

    def __init__(
        self,
        app: ASGIApp,
        guard: AdminGuard,
        open_paths: frozenset[str],
        console: Console | None = None,
    ) -> None:
        self.app = app
        self.guard = guard
        self.open_paths = open_paths
        self.console = console

    def _admits(self, scope: Scope) -> bool:
        path = scope["path"]
        if path in self.open_paths or self.guard.admits(scope["headers"]):
            return True
        console = self.console
        return console is not None and (
            is_open(path) or console.session_of(scope["headers"]) is not None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._admits(scope):
            if self.console is not None and wants_page(scope):
                await RedirectResponse(f"{UI}/login", status_code=303)(scope, receive, send)
                return
            response = JSONResponse(
                {
                    "error": "the admin port needs its key: send Authorization: Bearer <key>, "
                    "Authorization: Api-Key <key> or x-api-key: <key>"
                },
                status_code=401,
                headers={"www-authenticate": CHALLENGE},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class LoopbackNamesOnly:
    """ASGI middleware for an admin port without a key (on loopback): a request naming a
    host other than an address or localhost is refused (421). A web page whose name its
    attacker points at 127.0.0.1 (DNS rebinding) is then no longer the console's own origin
    to the browser, and could read the status and run actions; with a key it needs the key.
    open_paths (a webhook with its token, behind a proxy that keeps its public Host) pass."""

    def __init__(self, app: ASGIApp, open_paths: frozenset[str]) -> None:
        self.app = app
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] not in self.open_paths
            and not loopback_name(dict(scope["headers"]).get(b"host", b""))
        ):
            response = JSONResponse(
                {
                    "error": "without its key the admin port answers only requests to its "
                    "address or localhost; use http://127.0.0.1:<port>, or set its key"
                },
                status_code=421,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def loopback_name(host: bytes) -> bool:
    """Whether a Host header names an address or localhost (b"" for none: HTTP/1.0)."""
    name = host.decode("latin-1").strip().lower()
    if name.startswith("["):  # [::1]:8081
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name in ("", "localhost") or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def inflight_by_node(router: Router, backends: Backends) -> dict[str, int]:
    """Requests in flight per node: every node of the table, plus nodes still draining."""
    counts = dict.fromkeys(router.nodes, 0)
    for backend in list(backends.by_key.values()):
        counts[backend.node] = counts.get(backend.node, 0) + backend.inflight
    return counts


def make_control_app(
    source: ControlSource,
    extra_routes: Sequence[BaseRoute] = (),
    extra_status: Callable[[], dict[str, Any]] | None = None,
    admin: AdminGuard | None = None,
    open_paths: Iterable[str] = (),
    telemetry: Telemetry | None = None,
    peers: Peers | None = None,
    console: Console | None = None,
    node_detail: NodeDetail | None = None,
) -> Starlette:
    """The Starlette app serving the control plane's `/-/` endpoints for source.

    Whoever embeds the balancer (the watch loop) adds its own endpoints with extra_routes and
    its own fields to `/-/status` with extra_status, and a node's detail with node_detail.
    With admin, every path needs the admin key except `/-/healthz` and open_paths (endpoints
    that check a token of their own), or a console session. With telemetry, `/-/metrics` also
    scrapes the instances of nodes that declare a telemetry path and shows what they said.
    With peers (worker 0 of several), `/-/metrics` and `/-/status` answer for every worker.
    With console, the web console is served too (`/-/ui/`).
    """
    window = TrafficWindow()

    async def healthz(request: Request) -> Response:
        if source.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def build(node: str | None) -> dict[str, Any]:
        """The status document, with node's detail when one is asked for."""
        gathered = await peers.gather() if peers is not None else None
        if gathered is None:
            counts = source.metrics.snapshot()
        else:
            assert peers is not None
            others = [p.snapshot["metrics"] for p in gathered if p.snapshot is not None]
            counts = Metrics.combined([peers.local()["metrics"], *others]).snapshot()
        window.add(time.monotonic(), counts_from(counts))
        document = status_document(source, window)
        if peers is not None and gathered is not None:
            document = with_workers(document, peers.local(), gathered)
        if extra_status is not None:
            document.update(extra_status())
        if node is not None:
            document["node"] = await _detail(node)
        return document

    async def _detail(name: str) -> dict[str, Any]:
        """One node's detail: the embedder's (spec, logs) and its instances' telemetry."""
        detail: dict[str, Any] = {"name": name, "spec": None, "logs": None, "telemetry": None}
        if node_detail is not None:
            try:
                detail.update(await node_detail(name) or {})
            except Exception as exc:  # a bug there must not cost the status document
                log.exception("the detail of node %s failed", name)
                detail["error"] = f"{type(exc).__name__}: {exc}"
        entry = source.router.table.nodes.get(name)
        if telemetry is not None and entry is not None and entry.telemetry_path is not None:
            scrapes = await telemetry.collect(source.router.table, nodes={name})
            detail["telemetry"] = [
                {
                    "instance": s.target.instance,
                    "lines": (s.text or "").splitlines()[:TELEMETRY_LINES],
                    "error": s.error,
                }
                for s in scrapes
            ]
        return detail

    shared: dict[str | None, tuple[float, dict[str, Any]]] = {}

    async def build_shared(node: str | None) -> dict[str, Any]:
        """The document for the streams: built once per tick, however many pages follow it
        (at 1,000 nodes a build is a few tens of milliseconds)."""
        now = time.monotonic()
        cached = shared.get(node)
        if cached is not None and now - cached[0] < STREAM_EVERY / 2:
            return cached[1]
        document = await build(node)
        for key in [k for k, (at, _) in shared.items() if now - at > STREAM_HEARTBEAT]:
            del shared[key]  # nobody follows that node's page any more
        shared[node] = (now, document)
        return document

    async def status(request: Request) -> Response:
        return JSONResponse(await build(request.query_params.get("node")))

    async def stream(request: Request) -> Response:
        node = request.query_params.get("node")

        async def events() -> AsyncIterator[str]:
            last: dict[str, Any] | None = None
            quiet_since = time.monotonic()
            while not source.draining:
                document = await build_shared(node)
                steady = _without_clocks(document)
                now = time.monotonic()
                if steady != last or now - quiet_since >= STREAM_HEARTBEAT:
                    last = steady
                    quiet_since = now
                    yield f"data: {json.dumps(document, separators=(',', ':'))}\n\n"
                if await request.is_disconnected():
                    return
                await asyncio.sleep(STREAM_EVERY)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def metrics(request: Request) -> Response:
        router = source.router
        backends = source.backends
        if peers is None:
            text = source.metrics.render(lambda: inflight_by_node(router, backends))
        else:
            others = [p.snapshot for p in await peers.gather() if p.snapshot is not None]
            text = combined_metrics([peers.local(), *others])
        if telemetry is not None:
            try:
                text += await telemetry.render(router.table, FAMILIES)
            except Exception as exc:  # a bug there must not cost the balancer's own metrics
                log.exception("scraping the instances' telemetry failed")
                text += f"# telemetry failed: {type(exc).__name__}\n"
        return Response(text, media_type=CONTENT_TYPE)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # the only class it is registered for
        if exc.status_code == 404:
            message = f"no such endpoint: {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        else:
            message = exc.detail
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    middleware = [Middleware(SecurityHeaders)]
    opened = frozenset({"/-/healthz", *open_paths})
    if admin is not None:
        middleware.append(
            Middleware(RequireAdminKey, guard=admin, open_paths=opened, console=console)
        )
    else:
        middleware.append(Middleware(LoopbackNamesOnly, open_paths=opened))
    return Starlette(
        routes=[
            Route("/-/healthz", healthz, methods=["GET"]),
            Route("/-/status", status, methods=["GET"]),
            Route("/-/status/stream", stream, methods=["GET"]),
            Route("/-/metrics", metrics, methods=["GET"]),
            *(console.routes(admin) if console is not None else ()),
            *extra_routes,
        ],
        exception_handlers={HTTPException: http_error},
        middleware=middleware,
    )


def _without_clocks(document: dict[str, Any]) -> dict[str, Any]:
    """The document without the fields that change every second by themselves (compared as
    values: cheaper than as text)."""
    steady = {k: v for k, v in document.items() if k != "uptimeSeconds"}
    watch = steady.get("watch")
    if isinstance(watch, dict):
        steady["watch"] = {k: v for k, v in watch.items() if k != "now"}
    return steady
