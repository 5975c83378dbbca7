"""Several workers' counts as one: snapshots merged, status extended, peers read over sockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from balancer.control import combined_metrics, with_workers
from balancer.metrics import Metrics
from balancer.workers import Peers, PeerSnapshot, SnapshotServer, WorkerSet
from tests import promtext


def snapshot(worker: int, metrics: Metrics, inflight: dict[str, int]) -> dict[str, Any]:
    return {
        "worker": worker,
        "pid": 100 + worker,
        "generation": metrics.generation,
        "reloads": metrics.reloads,
        "lastReloadError": None,
        "healthy": ["a1"],
        "metrics": json.loads(json.dumps(metrics.snapshot())),  # as it crosses the socket
        "inflightByNode": inflight,
        "inflight": [["a1", "127.0.0.1:9001", inflight.get("a", 0)]],
    }


def test_workers_counts_are_summed_into_one_series_each() -> None:
    one, two = Metrics(), Metrics()
    one.observe("w", "a", 200, 0.004)
    one.observe(None, "a", 503, 2.0)
    one.observe(None, None, 404, 0.0)
    two.observe("w", "a", 200, 0.3)
    two.observe("v", "b", 200, 0.001)
    two.observe(None, None, 404, 0.0)
    one.reloaded(3)
    two.reloaded(2)
    two.reloaded(3)

    text = combined_metrics([snapshot(0, one, {"a": 1}), snapshot(1, two, {"a": 2, "b": 0})])
    families = promtext.read(text)

    requests = families["node_requests_total"]
    assert requests.value("node_requests_total", node_id="a") == 3
    assert requests.value("node_requests_total", node_id="b") == 1
    codes = families["node_http_codes_total"]
    assert codes.value("node_http_codes_total", node_id="a", code="200") == 2
    assert codes.value("node_http_codes_total", node_id="a", code="503") == 1
    assert families["alias_requests_total"].value("alias_requests_total", alias_name="w") == 2
    durations = families["node_request_durations"]
    assert durations.value("node_request_durations_count", node_id="a") == 3
    assert durations.value("node_request_durations_bucket", node_id="a", le="0.005") == 1
    assert durations.value("node_request_durations_sum", node_id="a") == 2.304
    unrouted = families["balancer_unrouted_requests_total"]
    assert unrouted.value("balancer_unrouted_requests_total", code="404") == 2
    # Every worker swaps the same tables: the most any one made, not their sum.
    assert families["balancer_reloads_total"].value("balancer_reloads_total") == 2
    assert families["balancer_table_generation"].value("balancer_table_generation") == 3
    inflight = families["balancer_inflight_requests"]
    assert inflight.value("balancer_inflight_requests", node_id="a") == 3


def test_status_adds_the_others_inflight_and_lists_every_worker() -> None:
    document: dict[str, Any] = {
        "generation": 1,
        "nodes": [
            {
                "name": "a",
                "instances": [{"instance": "a1", "address": "127.0.0.1:9001", "inflight": 1}],
            }
        ],
        "draining": [],
    }
    own = snapshot(0, Metrics(), {"a": 1})
    peers = [
        PeerSnapshot(1, snapshot(1, Metrics(), {"a": 2}), True),
        PeerSnapshot(2, snapshot(2, Metrics(), {"a": 4}), False),  # its last snapshot
        PeerSnapshot(3, None, False),  # never answered yet
    ]

    result = with_workers(document, own, peers)

    assert result["nodes"][0]["instances"][0]["inflight"] == 7
    assert [(w["worker"], w["pid"], w["answered"]) for w in result["workers"]] == [
        (0, 100, True),
        (1, 101, True),
        (2, 102, False),
        (3, None, False),
    ]


def test_a_peer_that_stops_answering_keeps_its_last_counts(tmp_path: Path) -> None:
    workers = WorkerSet(tmp_path, count=2, index=0)
    counts = Metrics()

    async def scenario() -> tuple[list[PeerSnapshot], list[PeerSnapshot], list[PeerSnapshot]]:
        server = SnapshotServer(workers.socket_path(1), lambda: snapshot(1, counts, {"a": 0}))
        peers = Peers(workers, local=lambda: {}, timeout=2.0)
        before = await peers.gather()  # nothing listens yet
        await server.start()
        counts.observe(None, "a", 200, 0.01)
        answered = await peers.gather()
        server.close()
        counts.observe(None, "a", 200, 0.01)  # not seen: the worker is gone
        after = await peers.gather()
        return before, answered, after

    before, answered, after = asyncio.run(scenario())
    assert before == [PeerSnapshot(1, None, False)]
    assert answered[0].answered and answered[0].snapshot is not None
    assert answered[0].snapshot["metrics"]["nodes"]["a"]["codes"] == {"200": 1}
    assert not after[0].answered
    assert after[0].snapshot == answered[0].snapshot
