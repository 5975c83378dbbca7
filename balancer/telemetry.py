"""Instances' own metrics: fetched when `/-/metrics` is scraped, and re-exposed after the
balancer's own families with every sample labelled `node_id` and `instance_id`.

A node opts in with a telemetry path in the routing table (spec `telemetry: {path, port}`);
each of its instances is then asked for `GET <path>` on its telemetry port (its serving port
when the node names none).

Why on demand, and not on a timer in the background: a scrape is rare (every 15-60 s) and
the instances' numbers are then as fresh as the balancer's own; nothing runs while nobody
looks, so the data plane never shares its loop with a polling task it does not need; and with
`--workers N` whichever process answers the scrape shows the same instances' metrics. The cost
is bounded: all instances are fetched concurrently (at most CONCURRENCY connections at once)
under one deadline of `timeout` seconds for the whole scrape, bodies are capped at `max_bytes`,
and parsing and merging, the only CPU-heavy part, run in a worker thread rather than on the
event loop the data plane serves requests on. An instance that does not answer in time,
answers something other than 200 with valid text, or is over the cap is reported, not fatal:
`node_telemetry_up` is 0 for it, a comment line says why, and everything else is served.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import httptools

from balancer.exposition import ExpositionError, Family, Labels, Merger, parse, sample_line
from balancer.http import authority
from balancer.table import RoutingTable

SCRAPE_TIMEOUT = 2.0  # seconds for all instances together, well inside Prometheus's default 10 s
MAX_BYTES = 4 * 2**20  # per instance
CONCURRENCY = 32  # connections open at once
USER_AGENT = "gitops-nodes-balancer"
ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
_SUFFIXES = ("_bucket", "_sum", "_count")  # the sample names a reserved family may use

NODE_LABEL = "node_id"
INSTANCE_LABEL = "instance_id"


@dataclass(frozen=True)
class _Row:
    """One instance's line in each of the scrape's own gauges."""

    source: Labels
    up: int
    seconds: float
    samples: int
    dropped: int


# The gauges this module writes about each scrape (an instance may not use these names).
OWN_FAMILIES: tuple[tuple[str, str, Callable[[_Row], str]], ...] = (
    (
        "node_telemetry_up",
        "1 when the instance's telemetry was scraped, else 0.",
        lambda row: str(row.up),
    ),
    (
        "node_telemetry_scrape_duration_seconds",
        "Seconds the scrape of the instance's telemetry took.",
        lambda row: repr(round(row.seconds, 6)),
    ),
    (
        "node_telemetry_samples",
        "Samples re-exposed from the instance's telemetry.",
        lambda row: str(row.samples),
    ),
    (
        "node_telemetry_samples_dropped",
        "Samples of the instance dropped: their family's name or type clashes with another's.",
        lambda row: str(row.dropped),
    ),
)


class ScrapeError(Exception):
    """An instance's telemetry could not be fetched; the message says why."""


@dataclass(frozen=True)
class Target:
    """One instance whose telemetry is scraped."""

    node: str
    instance: str
    host: str
    port: int
    path: str


@dataclass(frozen=True)
class Scrape:
    """What one instance's scrape gave: its text, or why there is none."""

    target: Target
    text: str | None
    error: str | None
    seconds: float


def targets(table: RoutingTable) -> list[Target]:
    """Every instance in rotation of every node with a telemetry path, sorted."""
    found = [
        Target(name, e.instance, e.host, e.telemetry_port or e.port, entry.telemetry_path)
        for name, entry in table.nodes.items()
        if entry.telemetry_path is not None
        for e in entry.endpoints
    ]
    return sorted(found, key=lambda t: (t.node, t.instance))


class Telemetry:
    """Scrapes the instances of a routing table and renders what they said."""

    def __init__(
        self,
        timeout: float = SCRAPE_TIMEOUT,
        max_bytes: int = MAX_BYTES,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.concurrency = concurrency

    async def collect(
        self, table: RoutingTable, nodes: Collection[str] | None = None
    ) -> list[Scrape]:
        """Fetch every target's text (only nodes', if given) at once, all within one
        deadline; never raises."""
        wanted = [t for t in targets(table) if nodes is None or t.node in nodes]
        if not wanted:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        gate = asyncio.Semaphore(self.concurrency)

        async def one(target: Target) -> Scrape:
            started = loop.time()
            text: str | None = None
            error: str | None = None
            try:
                async with asyncio.timeout_at(deadline), gate:
                    text = await fetch(target, self.max_bytes)
            except TimeoutError:
                error = f"no answer within {self.timeout:g}s"
            except ScrapeError as exc:
                error = str(exc)
            except OSError as exc:
                error = f"GET {target.path} on port {target.port} failed: {_describe(exc)}"
            return Scrape(target, text, error, loop.time() - started)

        return list(await asyncio.gather(*(one(t) for t in wanted)))

    async def render(self, table: RoutingTable, reserved: Iterable[str] = ()) -> str:
        """The instances' metrics, relabelled, after scraping them now; reserved are the
        family names the caller renders itself. Empty text when no node has telemetry."""
        scrapes = await self.collect(table)
        if not scrapes:
            return ""
        taken = frozenset(reserved)
        return await asyncio.to_thread(render, scrapes, taken)


def render(scrapes: Iterable[Scrape], reserved: Iterable[str] = ()) -> str:
    """The scraped texts as one exposition with `node_id` and `instance_id` on every sample,
    after the scrape's own gauges and a comment line for each instance that failed."""
    names = {f"{family}{suffix}" for family in reserved for suffix in ("", *_SUFFIXES)}
    names.update(name for name, _, _ in OWN_FAMILIES)
    merger = Merger(names)
    rows: list[_Row] = []
    out: list[str] = []
    for scrape in scrapes:
        target = scrape.target
        source = ((NODE_LABEL, target.node), (INSTANCE_LABEL, target.instance))
        error = scrape.error
        families: list[Family] = []
        if error is None and scrape.text is not None:
            try:
                families = parse(scrape.text)
            except ExpositionError as exc:
                error = f"GET {target.path} is not Prometheus text format: {exc}"
        if error is None:
            added, dropped = merger.add(families, source)
            rows.append(_Row(source, 1, scrape.seconds, added, dropped))
        else:
            out.append(f"# telemetry of {target.node}/{target.instance}: {_one_line(error)}")
            rows.append(_Row(source, 0, scrape.seconds, 0, 0))
    for name, help_text, value in OWN_FAMILIES:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} gauge")
        out.extend(sample_line(name, row.source, value(row)) for row in rows)
    return "\n".join(out) + "\n" + merger.render()


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- one HTTP GET -----------------------------------------------------------------------------


class _Response:
    """httptools callbacks collecting one response's status, framing and body."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.headers_done = False
        self.complete = False
        self.framed = False  # a content-length or chunked body: EOF before its end is an error
        self.encoding = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower in (b"content-length", b"transfer-encoding"):
            self.framed = True
        elif lower == b"content-encoding":
            self.encoding = value.strip().lower()

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


async def fetch(target: Target, max_bytes: int = MAX_BYTES) -> str:
    """`GET path` on a fresh connection to the target: the body as text; ScrapeError (or
    OSError, for the connection) when there is no 200 answer of valid UTF-8 within max_bytes."""
    what = f"GET {target.path} on port {target.port}"
    request = (
        f"GET {target.path} HTTP/1.1\r\nHost: {authority(target.host, target.port)}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        f"Accept: {ACCEPT}\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(request.encode("latin-1"))
        response = _Response()
        parser = httptools.HttpResponseParser(response)
        while not response.complete:
            data = await reader.read(65536)
            if not data:
                if response.headers_done and not response.framed:
                    break  # a body that ends when the connection does
                raise ScrapeError(f"{what}: the connection closed before the response ended")
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise ScrapeError(f"{what}: malformed HTTP response ({exc})") from None
            if len(response.body) > max_bytes:
                raise ScrapeError(f"{what}: the response is over {max_bytes} bytes")
        status = parser.get_status_code()
    finally:
        writer.close()
    if status != 200:
        raise ScrapeError(f"{what} answered {status}")
    if response.encoding not in (b"", b"identity"):
        raise ScrapeError(
            f"{what} answered with {response.encoding.decode(errors='replace')} encoding"
        )
    try:
        return response.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScrapeError(
            f"{what}: the body is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None


def _describe(exc: OSError) -> str:
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__
