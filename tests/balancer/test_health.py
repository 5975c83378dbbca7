"""Health: unhealthy instances leave balancing and come back, new instances wait for their
first passing check, refused connections are retried elsewhere and eject the instance, and
health state survives a table swap."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable

import pytest

from tests.balancer.conftest import BackendProcess, BalancerHarness, alias, node, send


def served_by(balancer: BalancerHarness, path: str, count: int) -> Counter[str | None]:
    conn = balancer.connect()
    try:
        replies = [send(conn, "GET", path) for _ in range(count)]
    finally:
        conn.close()
    assert [r.status for r in replies] == [200] * count, [r.body for r in replies]
    return Counter(r.backend for r in replies)


def test_unhealthy_instance_is_skipped_and_readmitted(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, a2 = start_backend("a1"), start_backend("a2")
    balancer.publish({"a": node(a1, a2)})
    balancer.wait_status({"a1": "Healthy", "a2": "Healthy"})
    assert set(served_by(balancer, "/nodes/a/x", 10)) == {"a1", "a2"}

    a2.set_healthy(False)
    balancer.wait_status({"a2": "Unhealthy"})
    assert served_by(balancer, "/nodes/a/x", 20) == {"a1": 20}
    assert balancer.instances()["a2"]["lastError"]

    # How long its checks have been failing: what watch replaces a hung instance on.
    key = (a2.name, a2.endpoint().host, a2.port)
    backend = balancer.call(lambda: balancer.balancer.backends.by_key[key])
    assert backend.failing_for(time.monotonic()) > 0
    assert backend.failing_for(time.monotonic() + 30) > 30

    a2.set_healthy(True)
    balancer.wait_status({"a2": "Healthy"})
    assert backend.failing_for(time.monotonic()) == 0
    counts = served_by(balancer, "/nodes/a/x", 20)
    assert counts["a2"] >= 5 and counts["a1"] >= 5, counts


def test_new_instance_takes_no_traffic_before_its_first_check_passes(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1 = start_backend("a1")
    # a2 accepts connections at once, but its health check takes 1.5 s to pass.
    a2 = start_backend("a2", health_delay_ms=1500)
    balancer.publish({"a": node(a1, timeout=5.0)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy"})

    balancer.publish({"a": node(a1, a2, timeout=5.0)}, {"w": alias(("a", 1))})
    assert balancer.instances()["a2"]["status"] != "Healthy"
    assert served_by(balancer, "/aliases/w/x", 20) == {"a1": 20}
    assert balancer.instances()["a2"]["status"] != "Healthy"

    balancer.wait_status({"a2": "Healthy"})
    assert served_by(balancer, "/aliases/w/x", 20)["a2"] >= 5


def test_unhealthy_new_instance_never_takes_traffic(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, a2 = start_backend("a1"), start_backend("a2", unhealthy=True)
    balancer.publish({"a": node(a1)})
    balancer.wait_status({"a1": "Healthy"})
    balancer.publish({"a": node(a1, a2)})
    balancer.wait_status({"a2": "Preparing"})
    assert served_by(balancer, "/nodes/a/x", 20) == {"a1": 20}
    assert a2.counts().get("/x", 0) == 0


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_connect_failure_is_retried_on_another_instance_and_ejects(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess], method: str
) -> None:
    a1, a2 = start_backend("a1"), start_backend("a2")
    # Slow active checks, so only the data plane can notice that a2 is gone.
    balancer.publish({"a": node(a1, a2, interval=30.0, unhealthy_threshold=3)})
    balancer.wait_status({"a1": "Healthy", "a2": "Healthy"})
    a2.kill()

    # Round robin over equal loads tries a2 within the first two requests. A connect failure
    # means nothing was sent, so a POST is retried too, its body (over the balancer's
    # 256 KiB hold limit) intact.
    conn = balancer.connect()
    try:
        for index in range(6):
            if method == "GET":
                reply = send(conn, "GET", "/nodes/a/x")
                assert reply.status == 200 and reply.backend == "a1", reply.body
            else:
                payload = os.urandom(300 * 1024 + index)
                reply = send(conn, "POST", "/nodes/a/echo", body=payload)
                assert reply.status == 200 and reply.backend == "a1", reply.body[:200]
                assert reply.body == payload
    finally:
        conn.close()
    instance = balancer.instances()["a2"]
    assert instance["status"] == "Unhealthy"
    assert "connect" in instance["lastError"], instance
    assert instance["inflight"] == 0


def test_health_state_survives_a_swap(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    # a1's check takes 1 s to pass: a swap that reset health would leave a gap of 503s.
    a1 = start_backend("a1", health_delay_ms=1000)
    b1 = start_backend("b1")
    balancer.publish({"a": node(a1, timeout=5.0)}, {"w": alias(("a", 1))})
    balancer.wait_status({"a1": "Healthy"}, within=10.0)

    swaps = [
        ({"a": node(a1, timeout=5.0), "b": node(b1)}, {"w": alias(("a", 1)), "v": alias(("b", 1))}),
        ({"a": node(a1, timeout=5.0, interval=0.2)}, {"w": alias(("a", 3))}),
        ({"renamed": node(a1, timeout=5.0)}, {"w": alias(("renamed", 1))}),
    ]
    for nodes, aliases in swaps:
        balancer.publish(nodes, aliases)
        reply = balancer.get("/aliases/w/x")
        assert reply.status == 200 and reply.backend == "a1", reply.body
        assert balancer.instances()["a1"]["status"] == "Healthy"
