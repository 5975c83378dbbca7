"""Operations: a malformed table file is rejected while the old table serves, metrics, healthz."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from balancer.table import FORMAT
from tests.balancer.conftest import BackendProcess, BalancerHarness, alias, node
from tests.waiting import wait_until


def replace_file(path: Path, text: str) -> None:
    temp = path.with_name(".tmp-" + path.name)
    temp.write_text(text)
    os.replace(temp, path)


def rejected_reloads(balancer: BalancerHarness) -> int:
    for line in balancer.admin("GET", "/-/metrics").body.decode().splitlines():
        if line.startswith("balancer_rejected_reloads_total "):
            return int(line.split()[1])
    raise AssertionError("no balancer_rejected_reloads_total in /-/metrics")


def test_malformed_table_is_rejected_and_the_old_one_keeps_serving(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy"})
    good = balancer.table_file.read_text()

    bad_files = [
        ("{not json", "is not valid JSON"),
        (good[: len(good) // 2], "is not valid JSON"),  # a partial write
        (json.dumps({"format": FORMAT, "generation": 7, "nodes": {}}), "KeyError: 'aliases'"),
        (json.dumps({"format": "something/else", "generation": 8}), "not a routing table"),
    ]
    for rejected, (text, problem) in enumerate(bad_files, start=1):
        replace_file(balancer.table_file, text)

        def reloaded(rejected: int = rejected) -> bool:
            return rejected_reloads(balancer) == rejected

        wait_until(reloaded, f"rejected reload number {rejected}")
        document = balancer.status()
        assert problem in document["lastReloadError"], document["lastReloadError"]
        assert document["generation"] == 1
        reply = balancer.get("/aliases/w/x")
        assert reply.status == 200 and reply.backend == "a1"

    balancer.publish({"a": node(a1)}, {"w": alias(("a", 1)), "v": alias(("a", 1))})
    assert balancer.status()["lastReloadError"] is None
    assert balancer.get("/aliases/v/x").status == 200


def test_metrics_count_requests_per_node_and_alias(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, b1 = start_backend("a1"), start_backend("b1")
    balancer.publish({"a": node(a1), "b": node(b1)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy", "b1": "Healthy"})
    for _ in range(5):
        assert balancer.get("/aliases/w/x").status == 200
    for _ in range(3):
        assert balancer.get("/nodes/b/x").status == 200
    assert balancer.get("/aliases/nope/x").status == 404

    reply = balancer.admin("GET", "/-/metrics")
    assert reply.status == 200
    content_type = reply.header("content-type")
    assert content_type is not None and content_type.startswith("text/plain")
    lines = set(reply.body.decode().splitlines())
    for line in (
        'node_requests_total{node_id="a"} 5',
        'node_requests_total{node_id="b"} 3',
        'alias_requests_total{alias_name="w"} 5',
        'node_http_codes_total{node_id="a",code="200"} 5',
        'alias_http_codes_total{alias_name="w",code="200"} 5',
        'alias_request_durations_count{alias_name="w"} 5',
        'node_request_durations_bucket{node_id="b",le="+Inf"} 3',
        "balancer_table_generation 1",
        'balancer_unrouted_requests_total{code="404"} 1',
    ):
        assert line in lines, line


def test_healthz_on_the_admin_port_and_the_data_port(balancer: BalancerHarness) -> None:
    for reply in (balancer.admin("GET", "/-/healthz"), balancer.get("/-/healthz")):
        assert reply.status == 200
        assert reply.json() == {"status": "ok"}


def test_status_lists_aliases_nodes_and_instances(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)}, {"w": alias(("a", 7))})
    balancer.wait_status({"a1": "Healthy"})
    document = balancer.status()
    assert document["generation"] == 1 and document["lastReloadError"] is None
    assert document["aliases"] == [
        {
            "name": "w",
            "affinityHeader": None,
            "access": None,
            "nodes": [{"node": "a", "weight": 7, "status": "Healthy"}],
        }
    ]
    [entry] = document["nodes"]
    assert entry["name"] == "a" and entry["status"] == "Healthy"
    assert entry["instances"][0]["address"] == f"127.0.0.1:{a1.port}"
