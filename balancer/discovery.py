"""Instances found by DNS: the endpoints of nodes whose table entry says `discover`.

On a Swarm the nodes' instances are tasks that Swarm starts, replaces and retires by itself;
`tasks.<service>` answers with the address of every task whose health check has passed, and
a task leaves those answers about two seconds before Swarm stops it (Docker's own delay, for
load balancers to notice). So the balancer resolves each `discover` name every
RESOLVE_INTERVAL, serves the table it was given with those addresses added as endpoints
(named "address:port"), and swaps in a new table only when the answers changed.

Make before break, here too: an address that leaves the answers while none of its node's
current instances is Healthy yet (a one-instance node whose replacement appeared in the same
answer) stays in rotation until one is, for at most HOLD seconds, well inside Docker's delay.
A failed lookup keeps the last answers: a DNS hiccup must not empty a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from balancer.table import Endpoint, NodeEntry, RoutingTable, split_discover

log = logging.getLogger("gitops_nodes.balancer")

RESOLVE_INTERVAL = 0.25  # seconds between lookups: Docker waits 2 s before stopping a task
HOLD = 1.0  # longest a leaving address stays while its node has no Healthy instance

Resolver = Callable[[str], Awaitable[list[str] | None]]  # addresses; None: unknown, keep
Healthy = Callable[[Endpoint], bool]


async def resolve_addresses(host: str) -> list[str] | None:
    """The IPv4 addresses host resolves to: [] when the name does not exist (a service with
    no Healthy task yet), None when the lookup failed for another reason."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return []
        return None
    except OSError:
        return None
    return sorted({str(info[4][0]) for info in infos})


@dataclass
class Served:
    """What discovery last served: per node, the endpoints found, and since when each
    address that left the answers has been gone (loop time)."""

    endpoints: dict[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    leaving: dict[tuple[str, str], float] = field(default_factory=dict)


def discovered_table(
    declared: RoutingTable,
    answers: Mapping[str, Sequence[str]],
    served: Served,
    now: float,
    healthy: Healthy,
    hold: float = HOLD,
) -> RoutingTable:
    """declared with each discovering node's found endpoints added (pure; updates served).

    answers maps a discover entry ("host:port") to the addresses its host resolved to; an
    entry not looked up yet keeps what was served for it before.
    """
    nodes: dict[str, NodeEntry] = {}
    endpoints: dict[str, tuple[Endpoint, ...]] = {}
    leaving: dict[tuple[str, str], float] = {}
    for name, entry in declared.nodes.items():
        if entry.discover is None:
            nodes[name] = entry
            continue
        port = split_discover(entry.discover)[1]
        before = served.endpoints.get(name, ())
        if entry.discover in answers:
            current = tuple(Endpoint(f"{a}:{port}", a, port) for a in answers[entry.discover])
        else:
            current = before
        kept = set(current)
        ready = any(healthy(e) for e in current)
        held = []
        for gone in before:
            if gone in kept:
                continue
            since = served.leaving.get((name, gone.instance), now)
            if not ready and now - since < hold:
                held.append(gone)
                leaving[(name, gone.instance)] = since
        found = current + tuple(held)
        endpoints[name] = found
        nodes[name] = replace(entry, endpoints=entry.endpoints + found)
    served.endpoints, served.leaving = endpoints, leaving
    return RoutingTable(declared.generation, MappingProxyType(nodes), declared.aliases)


class Discovery:
    """Keeps the served table's discovered endpoints in line with DNS, on the balancer's loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        serve: Callable[[RoutingTable], None],
        healthy: Healthy,
        resolve: Resolver = resolve_addresses,
        interval: float = RESOLVE_INTERVAL,
        hold: float = HOLD,
    ) -> None:
        self.loop = loop
        self.serve = serve  # the balancer's swap of the table requests use
        self.healthy = healthy
        self.resolve = resolve
        self.interval = interval
        self.hold = hold
        self.declared: RoutingTable | None = None
        self.answers: dict[str, list[str]] = {}
        self.served = Served()
        self.last: RoutingTable | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """Whether a table with a discovering node came in: from then on every table does."""
        return self.declared is not None

    def declare(self, table: RoutingTable) -> None:
        """A new table to serve; its discovering nodes get the addresses known so far, and
        the next lookup round adds new names (the rounds start with the first such table)."""
        self.declared = table
        self.refresh()
        if self.task is None and not self.loop.is_closed():
            self.task = self.loop.create_task(self._run(), name="discovery")

    def refresh(self) -> None:
        """Serve the declared table with what DNS answered, if that changes what is served
        (also called when an instance's health changes: it may end a hold)."""
        if self.declared is None:
            return
        table = discovered_table(
            self.declared, self.answers, self.served, self.loop.time(), self.healthy, self.hold
        )
        if table != self.last:
            self.last = table
            self.serve(table)

    async def _lookup(self) -> None:
        declared = self.declared
        if declared is None:
            return
        names = sorted({e.discover for e in declared.nodes.values() if e.discover})
        found = await asyncio.gather(*(self.resolve(split_discover(n)[0]) for n in names))
        for name, addresses in zip(names, found, strict=True):
            if addresses is not None:
                self.answers[name] = addresses
        for stale in set(self.answers) - set(names):
            del self.answers[stale]
        self.refresh()

    async def _run(self) -> None:
        while True:
            try:
                await self._lookup()
            except Exception:  # a bug must not end discovery: log it, try again next round
                log.exception("discovery round failed")
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
