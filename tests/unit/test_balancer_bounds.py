"""Nothing a table generation, a connection or a request creates stays in the balancer forever:
removed instances are forgotten once drained, their checks stop, the series of nodes and
aliases that left the table go, and the memos of heads, targets and sessions stay bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from balancer import http
from balancer.backends import Backend
from balancer.head import HeadCache, read_head
from balancer.metrics import Metrics
from balancer.routing import Affinity
from balancer.server import Balancer
from balancer.table import (
    AliasEntry,
    Endpoint,
    HealthSettings,
    NodeEntry,
    RoutingTable,
)

NOTHING_LISTENS = 9  # the discard port: nothing answers there on the test machine
GENERATIONS = 300


def table(generation: int) -> RoutingTable:
    """Generation n: node-n with two instances of its own behind alias-n, and a stable node."""
    health = HealthSettings(interval=60.0, start_timeout=600.0)
    node = f"node-{generation}"
    return RoutingTable(
        generation=generation,
        nodes={
            "stable": NodeEntry((Endpoint("stable-0", "127.0.0.1", NOTHING_LISTENS),), 1, health),
            node: NodeEntry(
                tuple(Endpoint(f"{node}-{i}", "127.0.0.1", NOTHING_LISTENS) for i in range(2)),
                1,
                health,
            ),
        },
        aliases={f"alias-{generation}": AliasEntry(((node, 100),))},
    )


@pytest.fixture
def balancer() -> Iterator[Balancer]:
    loop = asyncio.new_event_loop()
    found = Balancer(loop, follow_file=False)
    yield found
    found.checker.close()
    loop.run_until_complete(asyncio.sleep(0.01))  # the cancelled checks finish
    loop.close()


def test_generations_of_new_instances_leave_only_the_current_ones(balancer: Balancer) -> None:
    loop = balancer.loop
    for generation in range(1, GENERATIONS + 1):
        balancer.swap(table(generation))
        balancer.metrics.observe(f"alias-{generation}", f"node-{generation}", 200, 0.001)
        loop.run_until_complete(asyncio.sleep(0))

    current = {"stable-0", f"node-{GENERATIONS}-0", f"node-{GENERATIONS}-1"}
    assert {b.instance for b in balancer.backends.by_key.values()} == current
    assert len(balancer.checker) == 3  # one check task per current instance, no more
    assert set(balancer.metrics.nodes) == {f"node-{GENERATIONS}"}
    assert set(balancer.metrics.aliases) == {f"alias-{GENERATIONS}"}


def test_a_removed_instance_with_requests_in_flight_is_forgotten_once_drained(
    balancer: Balancer,
) -> None:
    balancer.swap(table(1))
    leaving = next(b for b in balancer.backends.by_key.values() if b.instance == "node-1-0")
    leaving.inflight = 1  # a request still on it when the next table comes

    balancer.swap(table(2))

    assert leaving in balancer.backends.draining()
    assert leaving not in balancer.checker
    balancer.proxy.release(leaving)  # its last request ends
    assert leaving not in balancer.backends.by_key.values()
    assert balancer.backends.draining() == []


def test_series_of_names_that_left_the_table_are_dropped_and_new_ones_counted() -> None:
    metrics = Metrics(max_names=2)
    for n in range(10):
        metrics.retain([f"n{n}"], [f"a{n}"])
        metrics.observe(f"a{n}", f"n{n}", 200, 0.01)
    # Without retain, names past max_names would no longer be counted at all.
    assert list(metrics.nodes) == ["n9"] and list(metrics.aliases) == ["a9"]
    assert metrics.nodes["n9"].codes == {200: 1}


def test_the_head_memos_stay_within_their_bounds() -> None:
    heads = HeadCache(limit=64)
    for n in range(1000):
        raw = b"GET /aliases/a/%d HTTP/1.1\r\nhost: x\r\n\r\n" % n
        head = read_head(b"GET", b"/aliases/a/%d" % n, "1.1", True, [(b"host", b"x")])
        heads.remember(raw, head)
        assert 0 < len(heads.heads) <= 64

    for n in range(5000):
        http.fast_head(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-n: %d" % n)
        http.split_target(b"/aliases/a%d/" % n)
    assert len(http._FAST_HEADS) <= http._FAST_HEADS_LIMIT
    assert len(http._TARGETS) <= http._TARGETS_LIMIT

    before = (len(http._FAST_HEADS), len(http._TARGETS))
    huge = b"x" * (http.MEMO_MAX_BYTES + 1)
    assert http.fast_head(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx: " + huge) is not None
    assert http.split_target(b"/aliases/a/" + huge)[1] == "a"
    assert (len(http._FAST_HEADS), len(http._TARGETS)) == before  # too long to remember


def test_session_affinity_remembers_a_bounded_number_of_sessions() -> None:
    affinity = Affinity(limit=100)
    backend = Backend("n", Endpoint("i", "127.0.0.1", NOTHING_LISTENS), HealthSettings())
    for n in range(1000):
        affinity.remember("a", b"%d" % n, backend)
    assert len(affinity.keys) == 100
