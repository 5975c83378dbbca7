"""Each node's endpoint settings and suspension, as the balancer honours them over real HTTP."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from balancer.table import NodeEntry, Timeouts
from tests.balancer.conftest import BackendProcess, BalancerHarness, alias, node, send
from tests.waiting import wait_until


def timed(entry: NodeEntry, request: float = 15.0, idle: float = 15.0) -> NodeEntry:
    return replace(entry, timeouts=Timeouts(request=request, idle=idle))


def test_each_node_has_its_own_request_timeout(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> None:
    balancer = make_balancer()  # the balancer's own read timeout: 60 s
    a1, b1 = start_backend("a1"), start_backend("b1")
    balancer.publish({"a": timed(node(a1), request=1.0), "b": timed(node(b1), request=10.0)})
    balancer.wait_status({"a1": "Healthy", "b1": "Healthy"})

    began = time.monotonic()
    reply = balancer.get("/nodes/a/slow?ms=5000")
    elapsed = time.monotonic() - began

    assert reply.status == 504, reply.body
    assert reply.header("content-type") == "application/json"
    document = reply.json()
    assert document["status"] == 504 and document["node"] == "a"
    assert "within 1s (the node's request timeout)" in document["error"]
    assert 1.0 <= elapsed < 3.5, elapsed  # the sweep runs once a second
    slower = balancer.get("/nodes/b/slow?ms=1500")  # b's is 10 s: longer than a's passes
    assert slower.status == 200 and slower.backend == "b1"
    wait_until(lambda: balancer.inflight() == 0, "in-flight count back to 0")
    assert balancer.get("/nodes/a/quick").status == 200


def test_the_request_timeout_bounds_the_whole_exchange(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> None:
    """A response that keeps coming (no silence for the read timeout) is still cut off."""
    balancer = make_balancer()
    a1 = start_backend("a1")
    balancer.publish({"a": timed(node(a1), request=1.0)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy"})

    conn = balancer.connect()
    try:
        began = time.monotonic()
        conn.request("GET", "/aliases/w/drip?ms=100&count=60")  # 6 s of chunks
        response = conn.getresponse()
        assert response.status == 200  # the head came in time
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        elapsed = time.monotonic() - began
    finally:
        conn.close()
    assert 1.0 <= elapsed < 3.5, elapsed
    wait_until(lambda: balancer.inflight() == 0, "in-flight count back to 0")


def test_a_new_table_changes_the_timeouts_of_instances_in_place(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> None:
    balancer = make_balancer()
    a1 = start_backend("a1")
    balancer.publish({"a": timed(node(a1), request=10.0)})
    balancer.wait_status({"a1": "Healthy"})
    assert balancer.get("/nodes/a/slow?ms=1500").status == 200

    balancer.publish({"a": timed(node(a1), request=1.0)})

    assert balancer.instances()["a1"]["status"] == "Healthy"  # the same instance, kept
    assert balancer.get("/nodes/a/slow?ms=5000").status == 504
    status = {n["name"]: n for n in balancer.status()["nodes"]}
    assert status["a"]["timeouts"] == {"request": 1.0, "idle": 15.0}


def open_serving(backend: BackendProcess) -> int:
    return int(backend.get("/-/stats").json()["openServing"])


def test_each_node_closes_its_idle_upstream_connections(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> None:
    balancer = make_balancer()
    a1, b1 = start_backend("a1"), start_backend("b1")
    balancer.publish({"a": timed(node(a1), idle=1.0), "b": timed(node(b1), idle=60.0)})
    balancer.wait_status({"a1": "Healthy", "b1": "Healthy"})

    conn = balancer.connect()
    try:
        assert send(conn, "GET", "/nodes/a/one").status == 200
        assert send(conn, "GET", "/nodes/b/one").status == 200
    finally:
        conn.close()
    # Both upstream connections went back to their pools, open.
    assert open_serving(a1) == 1 and open_serving(b1) == 1
    began = time.monotonic()

    wait_until(lambda: open_serving(a1) == 0, "a's idle connection to close", within=5.0)

    assert time.monotonic() - began >= 0.5  # not closed at once: kept for its idle time
    assert open_serving(b1) == 1  # b's idle timeout is a minute
    assert balancer.get("/nodes/a/two").status == 200  # a new connection serves at once
    assert a1.counts()["/two"] == 1


def test_a_suspended_node_is_routed_around(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> None:
    balancer = make_balancer()
    a1, b1 = start_backend("a1"), start_backend("b1")
    balancer.publish(
        {"a": node(a1), "b": node(b1)},
        {"both": alias(("a", 50), ("b", 50)), "only-a": alias(("a", 1))},
    )
    balancer.wait_status({"a1": "Healthy", "b1": "Healthy"})

    suspended = replace(node(a1), endpoints=(), suspended=True)
    balancer.publish(
        {"a": suspended, "b": node(b1)},
        {"both": alias(("a", 50), ("b", 50)), "only-a": alias(("a", 1))},
    )

    served = [balancer.get("/aliases/both/x").backend for _ in range(10)]
    assert served == ["b1"] * 10
    for path, words in (
        ("/aliases/only-a/x", "no Healthy instance serves alias 'only-a' (suspended: a)"),
        ("/nodes/a/x", "node 'a' is suspended"),
    ):
        reply = balancer.get(path)
        assert reply.status == 503, reply.body
        assert reply.header("content-type") == "application/json"
        assert reply.json()["error"] == words
    document = balancer.status()
    nodes = {n["name"]: n for n in document["nodes"]}
    assert nodes["a"]["status"] == "Suspended" and nodes["a"]["instances"] == []
    both = next(a for a in document["aliases"] if a["name"] == "both")
    assert [(n["node"], n["status"]) for n in both["nodes"]] == [
        ("a", "Suspended"),
        ("b", "Healthy"),
    ]
