"""Instances' own metrics through `/-/metrics`: scraped from real backend processes over
loopback, relabelled with node_id and instance_id, and failures reported without breaking it."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace

from balancer.table import Endpoint
from balancer.telemetry import SCRAPE_TIMEOUT
from tests import promtext
from tests.balancer.conftest import HOST, BackendProcess, BalancerHarness, alias, node


def scrape(balancer: BalancerHarness) -> tuple[dict[str, promtext.Family], list[str]]:
    """The admin /-/metrics, read strictly: its families and its lines."""
    reply = balancer.admin("GET", "/-/metrics")
    assert reply.status == 200
    content_type = reply.header("content-type")
    assert content_type is not None and content_type.startswith("text/plain; version=0.0.4")
    text = reply.body.decode()
    return promtext.read(text), text.splitlines()


def up(families: dict[str, promtext.Family]) -> dict[str, float]:
    return {labels["instance_id"]: v for _, labels, v in families["node_telemetry_up"].samples}


def test_instances_metrics_are_relabelled_next_to_the_balancers(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, a2, b1 = start_backend("a1"), start_backend("a2"), start_backend("b1")
    iris = replace(node(a1, a2), telemetry_path="/metrics")
    wine = replace(node(b1), telemetry_path="/metrics?chunked=1")  # a chunked answer
    balancer.publish({"iris": iris, "wine": wine}, {"front": alias(("iris", 1))})
    balancer.wait_status({"a1": "Healthy", "a2": "Healthy", "b1": "Healthy"})
    for _ in range(6):
        assert balancer.get("/aliases/front/predict").status == 200
    assert balancer.get("/nodes/wine/predict").status == 200

    families, _ = scrape(balancer)

    assert up(families) == {"a1": 1.0, "a2": 1.0, "b1": 1.0}
    requests = families["backend_requests_total"]
    assert requests.type == "counter" and requests.help == "Requests by path."
    per_instance = {
        labels["instance_id"]: value
        for _, labels, value in requests.samples
        if labels["path"] == "/predict"
    }
    assert per_instance["a1"] + per_instance["a2"] == 6  # what the balancer sent each
    assert per_instance["b1"] == 1
    assert {labels["node_id"] for _, labels, _ in requests.samples} == {"iris", "wine"}
    info = families["backend_info"]
    labels = {"node_id": "iris", "instance_id": "a1", "exported_instance_id": "a1"}
    assert info.value("backend_info", **labels, version="1") == 1
    assert families["node_requests_total"].value("node_requests_total", node_id="iris") == 6
    assert families["alias_requests_total"].value("alias_requests_total", alias_name="front") == 6


def test_a_separate_telemetry_port_is_the_one_scraped(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, exporter = start_backend("a1"), start_backend("a1-exporter")
    endpoint = Endpoint("a1", HOST, a1.port, telemetry_port=exporter.port)
    entry = replace(node(a1), endpoints=(endpoint,), telemetry_path="/metrics")
    balancer.publish({"iris": entry})
    balancer.wait_status({"a1": "Healthy"})

    families, _ = scrape(balancer)

    info = families["backend_info"]
    [(_, labels, _)] = info.samples
    assert labels["instance_id"] == "a1" and labels["exported_instance_id"] == "a1-exporter"


def test_a_dead_a_silent_and_a_garbled_instance_leave_the_rest_served(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, a2, bad = start_backend("a1"), start_backend("a2"), start_backend("bad")
    silent = socket.socket()  # listens but never accepts: connects, then no answer
    silent.bind((HOST, 0))
    silent.listen(8)
    try:
        hung = Endpoint("hung", HOST, silent.getsockname()[1])
        iris = replace(node(a1, a2), telemetry_path="/metrics")
        iris = replace(iris, endpoints=(*iris.endpoints, hung))
        garbled = replace(node(bad), telemetry_path="/metrics?bad=1")
        balancer.publish({"iris": iris, "garbled": garbled})
        balancer.wait_status({"a1": "Healthy", "a2": "Healthy", "bad": "Healthy"})
        a2.kill()

        families, lines = scrape(balancer)  # within the admin request's 5 s timeout
    finally:
        silent.close()

    assert up(families) == {"a1": 1.0, "a2": 0.0, "hung": 0.0, "bad": 0.0}
    assert [labels["instance_id"] for _, labels, _ in families["backend_info"].samples] == ["a1"]
    comments = [line for line in lines if line.startswith("# telemetry of")]
    assert comments[0].startswith("# telemetry of garbled/bad: GET /metrics?bad=1 is not ")
    assert "line 2: expected a quoted value for label path" in comments[0]
    assert comments[1].startswith(f"# telemetry of iris/a2: GET /metrics on port {a2.port} failed")
    assert comments[2] == f"# telemetry of iris/hung: no answer within {SCRAPE_TIMEOUT:g}s"
    assert "node_requests_total" in families  # the balancer's own metrics are all there
