"""Addressing and balancing: aliases and nodes by path or header, weights, least outstanding,
health-aware node choice, 404 and 503, and session affinity."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.balancer.conftest import BackendProcess, BalancerHarness, Reply, alias, node, send
from tests.waiting import wait_until


def names(replies: list[Reply]) -> Counter[str | None]:
    return Counter(r.backend for r in replies)


def get_many(
    balancer: Any, path: str, count: int, headers: dict[str, str] | None = None
) -> list[Reply]:
    """count GETs on one keep-alive connection; each must be answered 200."""
    conn = balancer.connect()
    try:
        replies = [send(conn, "GET", path, headers) for _ in range(count)]
    finally:
        conn.close()
    assert [r.status for r in replies] == [200] * count, [
        r.body for r in replies if r.status != 200
    ]
    return replies


def test_alias_weights_are_honoured_by_smooth_wrr(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, b1 = start_backend("a1"), start_backend("b1")
    balancer.publish({"a": node(a1), "b": node(b1)}, {"w": alias(("a", 90), ("b", 10))})
    balancer.wait_status({"a1": "Healthy", "b1": "Healthy"})

    served = [r.backend for r in get_many(balancer, "/aliases/w/predict", 200)]

    counts = Counter(served)
    assert 170 <= counts["a1"] <= 190 and 10 <= counts["b1"] <= 30, counts
    windows = [served[i : i + 100].count("a1") for i in range(len(served) - 99)]
    assert all(85 <= share <= 95 for share in windows), (min(windows), max(windows))


def test_least_outstanding_within_a_node(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, a2 = start_backend("a1"), start_backend("a2")
    balancer.publish({"a": node(a1, a2)})
    balancer.wait_status({"a1": "Healthy", "a2": "Healthy"})
    slow: list[Reply] = []
    worker = threading.Thread(
        target=lambda: slow.append(balancer.get("/nodes/a/slow?ms=1500")), daemon=True
    )
    worker.start()
    try:
        busy = wait_until(
            lambda: next((n for n, i in balancer.instances().items() if i["inflight"] == 1), None),
            "the slow request to be in flight",
        )
        idle = {"a1": "a2", "a2": "a1"}[busy]
        quick = get_many(balancer, "/nodes/a/quick", 10)
        assert names(quick) == {idle: 10}
    finally:
        worker.join(timeout=10)
    assert slow and slow[0].status == 200 and slow[0].backend == busy


def test_node_without_healthy_instance_gives_its_share_to_the_others(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, b1 = start_backend("a1"), start_backend("b1", unhealthy=True)
    balancer.publish({"a": node(a1), "b": node(b1)}, {"w": alias(("a", 50), ("b", 50))})
    balancer.wait_status({"a1": "Healthy", "b1": "Preparing"})

    assert names(get_many(balancer, "/aliases/w/x", 20)) == {"a1": 20}

    b1.set_healthy(True)
    balancer.wait_status({"b1": "Healthy"})
    counts = names(get_many(balancer, "/aliases/w/x", 20))
    assert counts == {"a1": 10, "b1": 10}, counts

    a1.set_healthy(False)
    balancer.wait_status({"a1": "Unhealthy"})
    assert names(get_many(balancer, "/aliases/w/x", 20)) == {"b1": 20}


def test_all_instances_down_gives_503_json(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, b1 = start_backend("a1"), start_backend("b1", unhealthy=True)
    balancer.publish({"a": node(a1), "b": node(b1)}, {"w": alias(("a", 1), ("b", 1))})
    balancer.wait_status({"a1": "Healthy", "b1": "Preparing"})
    a1.set_healthy(False)
    balancer.wait_status({"a1": "Unhealthy"})

    for path, name in (("/aliases/w/x", "w"), ("/nodes/a/x", "a"), ("/nodes/b/x", "b")):
        reply = balancer.get(path)
        assert reply.status == 503, (path, reply.body)
        assert reply.header("content-type") == "application/json"
        document = reply.json()
        assert document["status"] == 503 and repr(name) in document["error"], document

    a1.set_healthy(True)
    balancer.wait_status({"a1": "Healthy"})
    assert balancer.get("/aliases/w/x").status == 200


@pytest.mark.parametrize(
    ("path", "headers", "kind", "name"),
    [
        ("/aliases/nope/x", {}, "alias", "nope"),
        ("/nodes/nonode/x?y=1", {}, "node", "nonode"),
        ("/x", {"x-node-alias": "nope"}, "alias", "nope"),
        ("/x", {"x-node-alias": "datasphere.user.nope"}, "alias", "nope"),
        ("/x", {"x-node-id": "nonode"}, "node", "nonode"),
    ],
)
def test_unknown_alias_or_node_is_404_json_naming_it(
    balancer: BalancerHarness,
    start_backend: Callable[..., BackendProcess],
    path: str,
    headers: dict[str, str],
    kind: str,
    name: str,
) -> None:
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)}, {"w": alias(("a", 1))})
    reply = balancer.get(path, headers)
    assert reply.status == 404
    assert reply.header("content-type") == "application/json"
    document = reply.json()
    assert document[kind] == name and repr(name) in document["error"], document
    assert document["status"] == 404 and document["requestId"]


def test_no_alias_or_node_at_all_is_404_json(balancer: BalancerHarness) -> None:
    reply = balancer.get("/predict")
    assert reply.status == 404
    assert "error" in reply.json()


@pytest.mark.parametrize(
    "headers",
    [
        {"x-node-alias": "w"},
        {"x-node-alias": "datasphere.user.w"},
        {"X-Node-Alias": "datasphere.user.w"},
        {"x-node-id": "a"},
    ],
)
def test_headers_pick_the_target_and_the_path_passes_through(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess], headers: dict[str, str]
) -> None:
    a1, b1 = start_backend("a1"), start_backend("b1")
    balancer.publish({"a": node(a1), "b": node(b1)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy", "b1": "Healthy"})
    for _ in range(3):
        reply = balancer.get("/predict/v2?x=1&y=two", headers)
        assert reply.status == 200, reply.body
        document = reply.json()
        assert document["name"] == "a1"
        assert document["target"] == "/predict/v2?x=1&y=two"


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/aliases/w/api/v1/predict?q=1&r=two", "/api/v1/predict?q=1&r=two"),
        ("/aliases/w", "/"),
        ("/aliases/w/", "/"),
        ("/aliases/w?x=1", "/?x=1"),
        ("/aliases/datasphere.user.w/p", "/p"),
        ("/nodes/a/deep/path/", "/deep/path/"),
        ("/nodes/a/a%20b?x=%2F&y=", "/a%20b?x=%2F&y="),
    ],
)
def test_alias_and_node_urls_forward_path_and_query(
    balancer: BalancerHarness,
    start_backend: Callable[..., BackendProcess],
    target: str,
    forwarded: str,
) -> None:
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy"})
    reply = balancer.get(target)
    assert reply.status == 200, reply.body
    assert reply.json()["target"] == forwarded


def test_session_affinity_sticks_and_falls_back_when_the_instance_leaves(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, a2, b1 = start_backend("a1"), start_backend("a2"), start_backend("b1")
    nodes = {"a": node(a1, a2), "b": node(b1)}
    aliases = {"s": alias(("a", 50), ("b", 50), affinity_header="x-session")}
    balancer.publish(nodes, aliases)
    balancer.wait_status({"a1": "Healthy", "a2": "Healthy", "b1": "Healthy"})

    def served(keys: list[str], rounds: int = 6) -> dict[str, set[str | None]]:
        seen: dict[str, set[str | None]] = {key: set() for key in keys}
        conn = balancer.connect()
        try:
            for _ in range(rounds):  # interleaved, so plain balancing would spread each key
                for key in keys:
                    reply = send(conn, "GET", "/aliases/s/x", {"X-Session": key})
                    assert reply.status == 200, reply.body
                    seen[key].add(reply.backend)
        finally:
            conn.close()
        return seen

    keys = [f"k{i}" for i in range(6)]
    first = served(keys)
    assert all(len(backends) == 1 for backends in first.values()), first
    sticky = {key: next(iter(backends)) for key, backends in first.items()}
    assert len(set(sticky.values())) >= 2, sticky

    # Without the header, requests still spread over the instances.
    assert len(names(get_many(balancer, "/aliases/s/x", 12))) >= 2

    gone = sticky["k0"]
    assert gone is not None  # every reply named its backend
    survivors = {"a1": a1, "a2": a2, "b1": b1}
    del survivors[gone]
    remaining = [b for b in (a1, a2) if b.name != gone]
    nodes = {"a": node(*remaining)}
    if gone != "b1":
        nodes["b"] = node(b1)
    balancer.publish(nodes, aliases)

    second = served(keys)
    assert all(len(backends) == 1 for backends in second.values()), second
    assert second["k0"] != {gone} and next(iter(second["k0"])) in survivors
    for key, backend in sticky.items():
        if backend != gone:
            assert second[key] == {backend}, (key, backend, second[key])
