"""Per-node request rate, error rate and latency percentiles over the last seconds.

`/-/status` shows, for every node, what the balancer's own counters (balancer/metrics.py) say
about its recent traffic. Counters only grow, so a rate needs two readings: every status
document adds a reading (at most one a second) and the figures are the differences between
the newest reading and the oldest one of the window. Percentiles come from the difference of
the latency histograms, interpolated inside the bucket they fall in, as Prometheus's
`histogram_quantile` does. Everything here is pure: readings in, figures out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from balancer.metrics import BUCKETS

WINDOW = 10.0  # seconds the figures describe
MIN_STEP = 1.0  # seconds between two kept readings: bounds memory at 1,000 nodes


@dataclass(frozen=True)
class Counts:
    """One node's counters at one reading: requests, 5xx answers, per-bucket latencies."""

    requests: int
    errors: int
    buckets: tuple[int, ...]


def counts_from(snapshot: Mapping[str, Any]) -> dict[str, Counts]:
    """Each node's counts from a `Metrics.snapshot()` (or a combined one)."""
    found: dict[str, Counts] = {}
    for name, dumped in snapshot.get("nodes", {}).items():
        codes = {int(code): int(n) for code, n in dumped["codes"].items()}
        found[name] = Counts(
            requests=sum(codes.values()),
            errors=sum(n for code, n in codes.items() if code >= 500),
            buckets=tuple(int(n) for n in dumped["buckets"]),
        )
    return found


def quantile(q: float, buckets: tuple[int, ...]) -> float | None:
    """The q-quantile (0..1) in seconds of per-bucket counts over BUCKETS (+Inf last);
    None without observations. Past the last finite bound, that bound is the answer."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index >= len(BUCKETS):
                return BUCKETS[-1]
            lower = BUCKETS[index - 1] if index > 0 else 0.0
            upper = BUCKETS[index]
            return lower + (upper - lower) * max(0.0, rank - seen) / count
        seen += count
    return BUCKETS[-1]


class TrafficWindow:
    """Readings of every node's counters over the last WINDOW seconds."""

    def __init__(self, window: float = WINDOW, min_step: float = MIN_STEP) -> None:
        self.window = window
        self.min_step = min_step
        self.readings: deque[tuple[float, dict[str, Counts]]] = deque()

    def add(self, now: float, counts: dict[str, Counts]) -> None:
        """Keep a reading taken at now (monotonic seconds); the newest always replaces one
        taken less than min_step after the one before it."""
        readings = self.readings
        if len(readings) >= 2 and now - readings[-2][0] < self.min_step:
            readings[-1] = (now, counts)
        else:
            readings.append((now, counts))
        while len(readings) > 2 and now - readings[1][0] >= self.window:
            readings.popleft()

    def figures(self, node: str) -> dict[str, Any]:
        """A node's traffic: totals, and over the window requests/s, the share of 5xx
        answers (None without requests) and p50/p99 latency in seconds (None likewise)."""
        if not self.readings:
            return _figures(Counts(0, 0, ()), None, 0.0)
        newest_at, newest = self.readings[-1]
        now = newest.get(node, Counts(0, 0, ()))
        oldest_at, oldest = self.readings[0]
        if len(self.readings) < 2 or newest_at <= oldest_at:
            return _figures(now, None, 0.0)
        zero = Counts(0, 0, (0,) * len(now.buckets))
        before = oldest.get(node, zero)
        if now.requests < before.requests or len(before.buckets) != len(now.buckets):
            before = zero  # the series was reset (a node that went and came back)
        delta = Counts(
            now.requests - before.requests,
            now.errors - before.errors,
            tuple(a - b for a, b in zip(now.buckets, before.buckets, strict=True)),
        )
        return _figures(now, delta, newest_at - oldest_at)


def _figures(total: Counts, delta: Counts | None, seconds: float) -> dict[str, Any]:
    recent = delta is not None and delta.requests > 0
    return {
        "requests": total.requests,
        "errors": total.errors,
        "requestsPerSecond": round(delta.requests / seconds, 3) if delta and seconds else 0.0,
        "errorRate": round(delta.errors / delta.requests, 4) if recent and delta else None,
        "p50": _rounded(quantile(0.5, delta.buckets)) if recent and delta else None,
        "p99": _rounded(quantile(0.99, delta.buckets)) if recent and delta else None,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
