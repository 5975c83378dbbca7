"""Request counters and latency histograms per node and alias, in Prometheus text format.

The data plane calls `Metrics.observe` once per proxied request, so it is kept to a bisect on
precomputed bucket bounds and a few increments on plain lists and dicts: no locks (everything
runs in one event loop), no label formatting. Requests, errors and histogram counts are derived
from the per-code and per-bucket counts when `/-/metrics` is rendered, which is rare.

Family names and labels follow the reference platform (DataSphere Inference): `node_requests`,
`node_http_codes` (label `code`) and the histogram `node_request_durations` (seconds), labelled
`node_id`; the same three for aliases, labelled `alias_name`. `node_errors` and `alias_errors`
(responses of 500 or more) are ours, for dashboards that want an error rate in one series.
Counters are exposed with the `_total` suffix (`node_requests_total`), as OpenMetrics names a
counter family's sample and `promtool check metrics` wants: the family is the reference's name.

With `serve --workers N` each process counts its own requests; `snapshot()` and `merge()`
carry those counts to the worker that answers `/-/metrics`, which renders their sum.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from balancer.exposition import escape_label

# Upper bounds (seconds) of the latency histogram's buckets; +Inf is implied.
BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# Distinct node (and, separately, alias) names that get their own series. Any client can
# invent alias names, so past this bound a new name is counted as if it had none.
MAX_NAMES = 10_000

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

InflightSource = Callable[[], Mapping[str, int]]

_LE = (*(repr(bound) for bound in BUCKETS), "+Inf")

# The label naming the node, and the alias, of a series (the reference's names).
NODE_LABEL = "node_id"
ALIAS_LABEL = "alias_name"
_KINDS = (("node", NODE_LABEL), ("alias", ALIAS_LABEL))

# The counters' family names (the reference's), each exposed as `<family>_total`.
COUNTERS: tuple[str, ...] = tuple(
    f"{kind}_{what}" for kind, _ in _KINDS for what in ("requests", "http_codes", "errors")
)

# Every family `Metrics.render` writes: an instance's telemetry may not reuse these names (nor
# the counters' bare family names, which an OpenMetrics reader would take for the same family).
FAMILIES: frozenset[str] = frozenset(
    {
        *COUNTERS,
        *(f"{family}_total" for family in COUNTERS),
        *(f"{kind}_request_durations" for kind, _ in _KINDS),
        "balancer_unrouted_requests_total",
        "balancer_reloads_total",
        "balancer_rejected_reloads_total",
        "balancer_table_generation",
        "balancer_inflight_requests",
    }
)


class _Series:
    """The counts behind one node's or one alias's series."""

    __slots__ = ("buckets", "codes", "label", "total")

    def __init__(self, label: str) -> None:
        self.label = label  # the escaped name, formatted once
        self.total = 0.0  # sum of durations, seconds
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.codes: dict[int, int] = {}


class Metrics:
    """The balancer's counters: what `/-/metrics` shows. One instance per worker process."""

    def __init__(self, inflight: InflightSource | None = None, max_names: int = MAX_NAMES) -> None:
        self.inflight = inflight
        self.max_names = max_names
        self.nodes: dict[str, _Series] = {}
        self.aliases: dict[str, _Series] = {}
        self.unrouted: dict[int, int] = {}  # code -> requests with neither node nor alias
        self.reloads = 0
        self.rejected_reloads = 0
        self.generation = 0

    def observe(self, alias: str | None, node: str | None, code: int, seconds: float) -> None:
        """Count one finished request: its alias (None when addressed by node), the node that
        answered it (None when none was reached), its status code and its duration.

        Pass alias=None for an alias that is not in the table (the 404): a name any client can
        invent should not become a series. Requests with neither count as unrouted.
        """
        index = bisect_left(BUCKETS, seconds)
        counted = node is not None and self._count(self.nodes, node, code, seconds, index)
        if alias is not None and self._count(self.aliases, alias, code, seconds, index):
            counted = True
        if not counted:
            unrouted = self.unrouted
            unrouted[code] = unrouted.get(code, 0) + 1

    def _count(
        self, table: dict[str, _Series], name: str, code: int, seconds: float, index: int
    ) -> bool:
        """Count one request in name's series; False when there is none and no room for it."""
        series = table.get(name)
        if series is None:
            series = self._add(table, name)
            if series is None:
                return False
        series.total += seconds
        series.buckets[index] += 1
        codes = series.codes
        codes[code] = codes.get(code, 0) + 1
        return True

    def _add(self, table: dict[str, _Series], name: str) -> _Series | None:
        """A new series for name, or None when there are already max_names of them."""
        if len(table) >= self.max_names:
            return None
        series = table[name] = _Series(escape_label(name))
        return series

    def retain(self, nodes: Collection[str], aliases: Collection[str]) -> None:
        """Keep only the series of these nodes and aliases (a new table's): a long-running
        balancer sees nodes and aliases come and go with every commit, and would otherwise
        keep counting the ones that went, up to max_names, after which new names would not
        be counted at all. Prometheus reads a series that comes back as a counter reset."""
        for table, names in ((self.nodes, nodes), (self.aliases, aliases)):
            for gone in table.keys() - set(names):
                del table[gone]

    def snapshot(self) -> dict[str, Any]:
        """Every count as plain JSON values, for merging into another worker's Metrics."""
        return {
            "nodes": {name: _dump(series) for name, series in self.nodes.items()},
            "aliases": {name: _dump(series) for name, series in self.aliases.items()},
            "unrouted": {str(code): count for code, count in self.unrouted.items()},
            "reloads": self.reloads,
            "rejectedReloads": self.rejected_reloads,
            "generation": self.generation,
        }

    @classmethod
    def combined(cls, snapshots: Iterable[Mapping[str, Any]]) -> Metrics:
        """The sum of several workers' snapshots: counts and durations added up, reloads the
        most any worker made (each one follows the same table file), generation the lowest
        (the table every worker serves at least). No bound on names: each worker had one."""
        total = cls(max_names=2**62)
        first = True
        for snapshot in snapshots:
            total.merge(snapshot)
            generation = int(snapshot["generation"])
            total.generation = generation if first else min(total.generation, generation)
            first = False
        return total

    def merge(self, snapshot: Mapping[str, Any]) -> None:
        """Add one snapshot's counts to these (reloads: the larger of the two)."""
        for table, key in ((self.nodes, "nodes"), (self.aliases, "aliases")):
            for name, dumped in snapshot[key].items():
                series = table.get(name) or self._add(table, name)
                if series is None:
                    continue
                series.total += float(dumped["sum"])
                for index, count in enumerate(dumped["buckets"]):
                    series.buckets[index] += int(count)
                for code, count in dumped["codes"].items():
                    series.codes[int(code)] = series.codes.get(int(code), 0) + int(count)
        for code, count in snapshot["unrouted"].items():
            self.unrouted[int(code)] = self.unrouted.get(int(code), 0) + int(count)
        self.reloads = max(self.reloads, int(snapshot["reloads"]))
        self.rejected_reloads = max(self.rejected_reloads, int(snapshot["rejectedReloads"]))

    def reloaded(self, generation: int) -> None:
        """Count a routing table swapped in, and show its generation."""
        self.reloads += 1
        self.generation = generation

    def rejected_reload(self) -> None:
        """Count a table file that was malformed or partial (the current table kept serving)."""
        self.rejected_reloads += 1

    def render(self, inflight: InflightSource | None = None) -> str:
        """Everything in Prometheus text format 0.0.4, families and series in a stable order.

        inflight, or else the one given to the constructor, returns {node: requests in flight}.
        """
        out: list[str] = []
        _render_kind(out, "node", NODE_LABEL, self.nodes)
        _render_kind(out, "alias", ALIAS_LABEL, self.aliases)
        _family(
            out,
            "balancer_unrouted_requests_total",
            "counter",
            "Requests answered without reaching a node or a known alias (404 and the like).",
        )
        for code in sorted(self.unrouted):
            out.append(f'balancer_unrouted_requests_total{{code="{code}"}} {self.unrouted[code]}')
        _family(
            out,
            "balancer_reloads_total",
            "counter",
            "Routing tables swapped in.",
        )
        out.append(f"balancer_reloads_total {self.reloads}")
        _family(
            out,
            "balancer_rejected_reloads_total",
            "counter",
            "Routing table files rejected as malformed or partial.",
        )
        out.append(f"balancer_rejected_reloads_total {self.rejected_reloads}")
        _family(
            out,
            "balancer_table_generation",
            "gauge",
            "Generation of the routing table in use.",
        )
        out.append(f"balancer_table_generation {self.generation}")
        _family(
            out,
            "balancer_inflight_requests",
            "gauge",
            "Requests in flight to each node's instances.",
        )
        source = inflight if inflight is not None else self.inflight
        if source is not None:
            counts = source()
            for name in sorted(counts):
                out.append(
                    f'balancer_inflight_requests{{{NODE_LABEL}="{escape_label(name)}"}} '
                    f"{counts[name]}"
                )
        out.append("")
        return "\n".join(out)


def _dump(series: _Series) -> dict[str, Any]:
    return {
        "sum": series.total,
        "buckets": list(series.buckets),
        "codes": {str(code): count for code, count in series.codes.items()},
    }


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _render_kind(out: list[str], kind: str, label: str, table: Mapping[str, _Series]) -> None:
    """The four families of one kind ("node" or "alias"), each series labelled with its name."""
    names = sorted(table)
    family = f"{kind}_requests_total"
    _family(out, family, "counter", f"Requests per {kind}.")
    for name in names:
        series = table[name]
        out.append(f'{family}{{{label}="{series.label}"}} {sum(series.codes.values())}')
    family = f"{kind}_http_codes_total"
    _family(out, family, "counter", f"Responses per {kind} and HTTP status code.")
    for name in names:
        series = table[name]
        for code in sorted(series.codes):
            out.append(f'{family}{{{label}="{series.label}",code="{code}"}} {series.codes[code]}')
    family = f"{kind}_request_durations"
    _family(out, family, "histogram", f"Request durations per {kind}, in seconds.")
    for name in names:
        series = table[name]
        cumulative = 0
        for le, count in zip(_LE, series.buckets, strict=True):
            cumulative += count
            out.append(f'{family}_bucket{{{label}="{series.label}",le="{le}"}} {cumulative}')
        out.append(f'{family}_sum{{{label}="{series.label}"}} {series.total!r}')
        out.append(f'{family}_count{{{label}="{series.label}"}} {cumulative}')
    family = f"{kind}_errors_total"
    _family(out, family, "counter", f"Responses with a status code of 500 or more per {kind}.")
    for name in names:
        series = table[name]
        errors = sum(count for code, count in series.codes.items() if code >= 500)
        out.append(f'{family}{{{label}="{series.label}"}} {errors}')
