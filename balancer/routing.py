"""The compiled routing table: what a request reads once, at its start, to pick an instance.

A Router is built from one RoutingTable and the Backends registry and is never changed
afterwards, except for the balancing cursors (smooth weighted round robin state), which
belong to it and reset with a new table. Health and in-flight counts live on the Backends.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from balancer.access import Guard, compile_guards
from balancer.backends import Backend, BackendKey, Backends
from balancer.table import RoutingTable

AFFINITY_LIMIT = 100_000  # remembered session keys per balancer; the oldest are forgotten


class NodeRoute:
    """A node's instances; picks the Healthy one with the fewest requests in flight."""

    __slots__ = ("access", "backends", "cursor", "name", "prefix_rewrite", "suspended")

    def __init__(
        self,
        name: str,
        backends: list[Backend],
        access: Guard | None = None,
        suspended: bool = False,
        prefix_rewrite: bool = False,
    ) -> None:
        self.name = name
        self.prefix_rewrite = prefix_rewrite  # answers' Location and cookie paths under /nodes/<n>
        self.backends = backends
        self.cursor = 0
        self.access = access  # None: public, called directly without a key
        self.suspended = suspended  # then it has no backends: only the 503's message says why

    def has_healthy(self) -> bool:
        # A loop, not any(): this runs per request and a generator costs more.
        for backend in self.backends:  # noqa: SIM110
            if backend.healthy:
                return True
        return False

    def pick(self, exclude: Backend | None = None) -> Backend | None:
        backends = self.backends
        count = len(backends)
        if count == 1:
            only = backends[0]
            return only if only.healthy and only is not exclude else None
        if count == 0:
            return None
        # Start where the last pick left off, so equal loads spread round robin.
        start = self.cursor = (self.cursor + 1) % count
        best: Backend | None = None
        for offset in range(count):
            backend = backends[(start + offset) % count]
            if not backend.healthy or backend is exclude:
                continue
            if best is None or backend.inflight < best.inflight:
                best = backend
        return best


class AliasRoute:
    """An alias's nodes with their weights, split by smooth weighted round robin."""

    __slots__ = (
        "access",
        "affinity_header",
        "by_key",
        "current",
        "name",
        "nodes",
        "prefix_rewrite",
        "weights",
    )

    def __init__(
        self,
        name: str,
        nodes: list[NodeRoute],
        weights: list[int],
        affinity_header: str | None,
        access: Guard | None = None,
        prefix_rewrite: bool = False,
    ) -> None:
        self.name = name
        self.prefix_rewrite = (
            prefix_rewrite  # answers' Location and cookie paths under /aliases/<a>
        )
        self.access = access  # None: public
        self.nodes = nodes
        self.weights = weights
        self.current = [0] * len(nodes)
        self.affinity_header = affinity_header.encode() if affinity_header else None
        self.by_key = {b.key: b for node in nodes for b in node.backends}  # for affinity

    def pick_node(self) -> NodeRoute | None:
        """The next node by weight among those with a Healthy instance (nginx's smooth WRR)."""
        nodes = self.nodes
        if len(nodes) == 1:  # the common case: nothing to split
            return nodes[0] if self.weights[0] > 0 and nodes[0].has_healthy() else None
        total = 0
        best = -1
        current = self.current
        for position, node in enumerate(self.nodes):
            weight = self.weights[position]
            if weight <= 0 or not node.has_healthy():
                continue
            current[position] += weight
            total += weight
            if best < 0 or current[position] > current[best]:
                best = position
        if best < 0:
            return None
        current[best] -= total
        return self.nodes[best]


class Router:
    """Nodes and aliases by name, as one routing table defines them."""

    __slots__ = ("aliases", "generation", "nodes", "table")

    def __init__(self, table: RoutingTable, backends: Backends) -> None:
        self.table = table
        self.generation = table.generation
        guards = compile_guards(table)
        self.nodes: dict[str, NodeRoute] = {}
        for name, entry in table.nodes.items():
            members = [
                backends.by_key[(e.instance, e.host, e.port)]
                for e in entry.endpoints
                if (e.instance, e.host, e.port) in backends.by_key
            ]
            self.nodes[name] = NodeRoute(
                name, members, guards.nodes.get(name), entry.suspended, entry.prefix_rewrite
            )
        self.aliases: dict[str, AliasRoute] = {}
        for name, alias in table.aliases.items():
            pairs = [(self.nodes[n], w) for n, w in alias.targets if n in self.nodes]
            self.aliases[name] = AliasRoute(
                name,
                [n for n, _ in pairs],
                [w for _, w in pairs],
                alias.affinity_header,
                guards.aliases.get(name),
                alias.prefix_rewrite,
            )


class Affinity:
    """Session keys -> the instance that served them, kept across table swaps, bounded."""

    def __init__(self, limit: int = AFFINITY_LIMIT) -> None:
        self.limit = limit
        self.keys: OrderedDict[tuple[str, bytes], BackendKey] = OrderedDict()

    def lookup(
        self, alias: str, value: bytes, backends: Mapping[BackendKey, Backend]
    ) -> Backend | None:
        key = self.keys.get((alias, value))
        if key is None:
            return None
        backend = backends.get(key)
        if backend is None or not backend.healthy:
            del self.keys[(alias, value)]  # its instance left: fall back to the normal pick
            return None
        self.keys.move_to_end((alias, value))
        return backend

    def remember(self, alias: str, value: bytes, backend: Backend) -> None:
        self.keys[(alias, value)] = backend.key
        self.keys.move_to_end((alias, value))
        if len(self.keys) > self.limit:
            self.keys.popitem(last=False)
