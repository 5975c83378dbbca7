"""Nodes whose instances the balancer finds by DNS, and tables pushed to the admin port, over
real loopback HTTP with real backend processes (the Swarm runtime's way of reaching them)."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

from balancer.push import MAX_TABLE_BYTES
from balancer.table import NodeEntry, RoutingTable
from gitops_nodes.errors import RuntimeFailure
from gitops_nodes.runtime.swarm_balancer import SwarmBalancers
from tests.balancer.conftest import HOST, BackendProcess, BalancerHarness, alias, health
from tests.balancer.test_hostile import read_to_eof
from tests.waiting import wait_until


def discovering(port: int, host: str = "localhost") -> NodeEntry:
    """A node with no listed instance: the balancer resolves host and uses port."""
    return NodeEntry((), 1, health(), discover=f"{host}:{port}")


def table(generation: int, nodes: dict[str, NodeEntry], aliases: dict[str, Any]) -> RoutingTable:
    return RoutingTable(generation, MappingProxyType(nodes), MappingProxyType(aliases))


def push(harness: BalancerHarness, token: str | None, body: bytes) -> Any:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return harness.admin("PUT", "/-/table", headers, body)


def test_a_discovered_node_is_served_from_what_its_name_resolves_to(
    make_balancer: Callable[..., BalancerHarness],
    start_backend: Callable[..., BackendProcess],
) -> None:
    backend = start_backend("found")
    token = secrets.token_hex(8)
    harness = make_balancer(token=token)
    pushed = table(3, {"web": discovering(backend.port)}, {"site": alias(("web", 100))})

    reply = push(harness, token, json.dumps(pushed.to_json()).encode())

    assert reply.status == 200, reply.body
    assert reply.json() == {"generation": 3}
    key = f"{HOST}:{backend.port}"  # localhost resolves to loopback: the instance's name
    harness.wait_status({key: "Healthy"})
    answer = harness.get("/aliases/site/hello")
    assert answer.status == 200 and answer.backend == "found"
    ack = harness.admin("GET", "/-/ack", {"authorization": f"Bearer {token}"}).json()
    assert ack["generation"] == 3 and ack["healthy"] == [key]


def test_pushes_need_the_token_and_a_whole_table(
    make_balancer: Callable[..., BalancerHarness],
    start_backend: Callable[..., BackendProcess],
) -> None:
    backend = start_backend("kept")
    token = secrets.token_hex(8)
    harness = make_balancer(token=token)
    good = table(1, {"web": discovering(backend.port)}, {"site": alias(("web", 100))})
    assert push(harness, token, json.dumps(good.to_json()).encode()).status == 200
    harness.wait_status({f"{HOST}:{backend.port}": "Healthy"})

    assert push(harness, None, b"{}").status == 401
    assert push(harness, "wrong", json.dumps(good.to_json()).encode()).status == 401
    assert harness.admin("GET", "/-/ack").status == 401
    truncated = json.dumps(table(2, {}, {}).to_json()).encode()[:-5]
    refused = push(harness, token, truncated)
    assert refused.status == 400 and refused.json()["serving"] == 1
    malformed = {**good.to_json(), "generation": 2}
    malformed["nodes"]["web"]["discover"] = "no-port"
    assert push(harness, token, json.dumps(malformed).encode()).status == 400
    # Before: 500 and a traceback (RecursionError, OverflowError), or taken and served (a
    # port past 65535, a health interval of 0 that spun the checker, a generation of 1.5).
    deep = b"[" * 100_000 + b"]" * 100_000
    assert push(harness, token, deep).status == 400
    for key, value in (("generation", 1e400), ("generation", 1.5), ("generation", True)):
        bad = {**good.to_json(), key: value}
        assert push(harness, token, json.dumps(bad).encode()).status == 400, (key, value)
    for where, value in (("port", 70000), ("port", -1)):
        bad = json.loads(json.dumps({**good.to_json(), "generation": 2}))
        bad["nodes"]["web"]["endpoints"] = [{"instance": "i", "host": HOST, where: value}]
        assert push(harness, token, json.dumps(bad).encode()).status == 400, (where, value)
    for checks in ({"interval": 0}, {"interval": "x"}, {"timeout": -1}):
        bad = json.loads(json.dumps({**good.to_json(), "generation": 2}))
        bad["nodes"]["web"]["health"].update(checks)
        assert push(harness, token, json.dumps(bad).encode()).status == 400, checks
    with socket.create_connection((HOST, harness.admin_port), timeout=10) as sock:
        sock.sendall(
            b"PUT /-/table HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer %s\r\n"
            b"content-length: %d\r\n\r\n" % (token.encode(), MAX_TABLE_BYTES + 1)
        )  # refused from its head: never read, never held
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"serving":1' in answer, answer[:300]

    assert harness.status()["generation"] == 1  # every refused push left the table alone
    assert harness.get("/aliases/site/x").backend == "kept"
    # What it serves is given back whole (to an apply that lost its state directory), and
    # only with the token.
    served = harness.admin("GET", "/-/table", {"authorization": f"Bearer {token}"})
    assert served.status == 200 and served.json() == good.to_json()
    assert harness.admin("GET", "/-/table").status == 401
    assert harness.admin("GET", "/-/table", {"authorization": "Bearer wrong"}).status == 401


def test_a_name_that_stops_resolving_takes_its_instances_out(
    make_balancer: Callable[..., BalancerHarness],
    start_backend: Callable[..., BackendProcess],
) -> None:
    backend = start_backend("leaving")
    token = secrets.token_hex(8)
    harness = make_balancer(token=token)
    answers: list[str] = [HOST]

    async def resolve(host: str) -> list[str] | None:
        return list(answers)

    harness.call(lambda: setattr(harness.balancer.discovery, "resolve", resolve))
    web = discovering(backend.port, "tasks.web")
    pushed = table(1, {"web": web}, {"site": alias(("web", 100))})
    assert push(harness, token, json.dumps(pushed.to_json()).encode()).status == 200
    key = f"{HOST}:{backend.port}"
    harness.wait_status({key: "Healthy"})

    answers.clear()  # Swarm retired the task: its address leaves the DNS answers

    # held at most HOLD (no other instance of the node is Healthy), then gone
    wait_until(lambda: key not in harness.instances(), "the instance to leave", within=3.0)
    assert harness.get("/aliases/site/x").status == 503


def test_apply_side_fleet_publishes_and_reads_reports(
    make_balancer: Callable[..., BalancerHarness],
    start_backend: Callable[..., BackendProcess],
) -> None:
    backend = start_backend("fleet")
    token = secrets.token_hex(8)
    harness = make_balancer(token=token)
    fleet = SwarmBalancers(lambda: [f"{HOST}:{harness.admin_port}"], token)
    first = table(4, {"web": discovering(backend.port)}, {"site": alias(("web", 100))})

    fleet.publish(first)

    key = f"{HOST}:{backend.port}"
    wait_until(lambda: key in fleet.acks()[0].healthy, "the fleet's report to count it Healthy")
    (ack,) = fleet.acks()
    assert ack.generation == 4 and ack.where == f"{HOST}:{harness.admin_port}"
    # a balancer that restarted serves nothing: sync gives it the last table again
    harness.call(lambda: harness.balancer.swap(table(0, {}, {})))
    fleet.sync(first)
    assert fleet.acks()[0].generation == 4
    with pytest.raises(RuntimeFailure, match="did not take table generation"):
        SwarmBalancers(lambda: [f"{HOST}:{harness.admin_port}"], "wrong").publish(first)
