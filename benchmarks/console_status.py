"""How long `/-/status` (the web console's one source) takes to build at 1,000 nodes, and how
large it is: the stream sends it at most twice a second to each open page.

Run: python3 benchmarks/console_status.py [NODES]. Prints milliseconds per document (median of
50) and its size in bytes, as JSON text.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from types import MappingProxyType

from balancer.console.traffic import TrafficWindow, counts_from
from balancer.control import status_document
from balancer.server import Balancer
from balancer.table import AliasEntry, Endpoint, HealthSettings, NodeEntry, RoutingTable


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    loop = asyncio.new_event_loop()
    balancer = Balancer(loop)
    health = HealthSettings(path="/healthz", interval=3600.0)
    nodes = {
        f"node-{i:04d}": NodeEntry(
            endpoints=tuple(Endpoint(f"node-{i:04d}-{k}", "127.0.0.1", 9) for k in range(2)),
            min_healthy=1,
            health=health,
        )
        for i in range(count)
    }
    aliases = {
        f"alias-{i:04d}": AliasEntry(((f"node-{i:04d}", 90), (f"node-{(i + 1) % count:04d}", 10)))
        for i in range(count)
    }
    table = RoutingTable(
        generation=1, nodes=MappingProxyType(nodes), aliases=MappingProxyType(aliases)
    )

    async def measure() -> tuple[float, int]:
        balancer.swap(table)
        for i in range(count):  # every node with some traffic, so every figure is computed
            balancer.metrics.observe(f"alias-{i:04d}", f"node-{i:04d}", 200, 0.004)
        window = TrafficWindow()
        times = []
        size = 0
        for _ in range(50):
            started = time.perf_counter()
            window.add(time.monotonic(), counts_from(balancer.metrics.snapshot()))
            text = json.dumps(status_document(balancer, window), separators=(",", ":"))
            times.append(time.perf_counter() - started)
            size = len(text)
        balancer.checker.close()
        return statistics.median(times), size

    median, size = loop.run_until_complete(measure())
    print(
        f"{count} nodes, {count} aliases, {2 * count} instances: /-/status built in "
        f"{median * 1000:.1f} ms (median of 50), {size} bytes"
    )


if __name__ == "__main__":
    main()
