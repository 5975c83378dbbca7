"""The issue's "done when": concurrent load while the routing table is swapped at least 50
times between two nodes, with zero failed requests."""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable

from tests.balancer.conftest import HOST, BackendProcess, BalancerHarness, alias, node

CLIENTS = 8
SWAPS = 50
TIME_LIMIT = 15.0


def test_swapping_the_table_under_load_fails_no_request(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    v1, v2 = start_backend("v1"), start_backend("v2")
    nodes = {
        "v1": node(v1, timeout=2.0, unhealthy_threshold=3),
        "v2": node(v2, timeout=2.0, unhealthy_threshold=3),
    }
    balancer.publish(nodes, {"model": alias(("v1", 100))})
    balancer.wait_status({"v1": "Healthy", "v2": "Healthy"})

    stop = threading.Event()
    deadline = time.monotonic() + TIME_LIMIT
    lock = threading.Lock()
    served: Counter[str] = Counter()
    failures: list[str] = []

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(HOST, balancer.port, timeout=10)
        try:
            count = 0
            while not stop.is_set() and time.monotonic() < deadline:
                count += 1
                try:
                    conn.request("GET", f"/aliases/model/predict?c={index}&n={count}")
                    response = conn.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        failures.append(f"client {index}: {type(exc).__name__}: {exc}")
                    conn.close()
                    continue
                name = None
                if response.status == 200:
                    name = response.headers.get("x-backend")
                with lock:
                    if name in ("v1", "v2"):
                        served[name] += 1
                    else:
                        failures.append(f"client {index}: {response.status} {body[:200]!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    swaps = 0
    try:
        while swaps < SWAPS and time.monotonic() < deadline - 1.0:
            target = "v2" if swaps % 2 == 0 else "v1"
            balancer.publish(nodes, {"model": alias((target, 100))})
            swaps += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    assert not any(thread.is_alive() for thread in threads)
    assert swaps >= SWAPS, f"only {swaps} swaps within {TIME_LIMIT:g}s"
    assert failures == [], failures[:10]
    assert served["v1"] > 0 and served["v2"] > 0, served
    assert sum(served.values()) >= 200, served
