"""`serve --workers N`: the admin port answers for every worker, as a real Prometheus sees it.

Each test runs the `gitops-nodes serve` command with 3 workers over real backends. The
Prometheus server is Debian's `prometheus` binary (scripts/lib/ensure-test-tools.sh installs
it), started here with a temporary configuration that scrapes the admin port on loopback
every 200 ms, and read back through its HTTP API on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import promtext
from tests.balancer.conftest import HOST, BackendProcess, alias, free_port, node
from tests.balancer.served import ServeProcess, fresh_get
from tests.balancer.test_promtool import promtool_check
from tests.waiting import wait_until

WORKERS = 3


class Prometheus:
    """A Prometheus server on loopback scraping one target, and its query API."""

    def __init__(self, folder: Path, target: str, interval: str = "200ms") -> None:
        binary = shutil.which("prometheus")
        assert binary, "the prometheus binary is missing: run scripts/lib/ensure-test-tools.sh"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {interval}\n"
            f"  scrape_timeout: {interval}\n"
            "scrape_configs:\n"
            "  - job_name: balancer\n"
            "    metrics_path: /-/metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.port = free_port()
        self.log = folder / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address={HOST}:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(self._ready, "prometheus to be ready", 60.0, 0.1)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}/-/ready", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result of an instant query (a vector or a matrix)."""
        query = urllib.parse.urlencode({"query": expression})
        url = f"http://{HOST}:{self.port}/api/v1/query?{query}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            answer = json.loads(reply.read())
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    servers: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        server = Prometheus(tmp_path / f"prometheus{len(servers)}", target)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def traffic(port: int, paths: list[str], seconds: float) -> tuple[threading.Thread, Counter[str]]:
    """GETs on fresh connections for `seconds` from 4 threads; the counter counts the answers
    per path (filled in once the returned thread has ended)."""
    sent: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def one_client(offset: int) -> None:
        index = offset
        while time.monotonic() < deadline:
            path = paths[index % len(paths)]
            fresh_get(port, path)
            index += 1
            with lock:
                sent[path] += 1
            time.sleep(0.002)  # a light, steady load: the scrapes see it grow

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()

    def join_all() -> None:
        for thread in threads:
            thread.join(timeout=seconds + 30)

    joiner = threading.Thread(target=join_all)
    joiner.start()
    return joiner, sent


def test_prometheus_sees_counters_of_all_workers_that_never_decrease(
    serve: Callable[..., ServeProcess],
    start_backend: Callable[..., BackendProcess],
    prometheus: Callable[[str], Prometheus],
) -> None:
    a1, a2 = start_backend("a1"), start_backend("a2")
    served = serve("--workers", str(WORKERS))
    served.publish({"a": node(a1, a2)}, {"w": alias(("a", 1))})
    server = prometheus(f"{HOST}:{served.admin_port}")
    wait_until(lambda: server.value("up") == 1.0, "prometheus to scrape the admin port", 30.0, 0.1)

    joiner, sent = traffic(served.port, ["/aliases/w/x", "/nodes/a/y"], seconds=6.0)
    # Meanwhile, scrapes of our own on new connections (Prometheus keeps one connection open,
    # which the kernel would pin to one worker): each must see at least what the last saw.
    seen: list[float] = []
    while joiner.is_alive() and len(seen) < 500:
        families = promtext.read(served.admin("/-/metrics").body.decode())
        counted = families.get("node_requests_total")
        if counted is not None and counted.samples:  # before the first request: no sample yet
            seen.append(counted.value("node_requests_total", node_id="a"))
        time.sleep(0.02)
    joiner.join(timeout=60)
    assert not joiner.is_alive()
    assert len(seen) >= 20, f"only {len(seen)} scrapes of our own"
    assert seen == sorted(seen), f"a counter went down between scrapes: {seen}"
    total = sum(sent.values())
    assert total > 100, f"only {total} requests were sent"

    # Every request, whichever worker took it, is in the one series Prometheus keeps.
    expression = 'node_requests_total{node_id="a"}'
    wait_until(
        lambda: server.value(expression) == total,
        f"prometheus to see all {total} requests",
        30.0,
        0.1,
    )
    samples = server.query(f"{expression}[2m]")
    assert len(samples) == 1, samples  # one series: no worker label, no duplicates
    values = [float(v) for _, v in samples[0]["values"]]
    assert len(values) >= 20, f"only {len(values)} scrapes"
    assert values == sorted(values), f"a counter went down between scrapes: {values}"
    assert values[-1] == total
    for family in ("node_requests_total", "alias_requests_total", "node_http_codes_total"):
        assert server.value(f"sum(resets({family}[2m]))") == 0.0, family
    assert server.value('alias_requests_total{alias_name="w"}') == sent["/aliases/w/x"]
    assert server.value('node_request_durations_count{node_id="a"}') == total

    # The admin port itself: the same text, valid, and every worker took part.
    text = served.admin("/-/metrics").body.decode()
    assert promtool_check(text) == ""
    families = promtext.read(text)
    assert families["node_requests_total"].value("node_requests_total", node_id="a") == total
    document = served.status()
    assert [w["worker"] for w in document["workers"]] == list(range(WORKERS))
    assert all(w["answered"] for w in document["workers"])
    assert len({w["pid"] for w in document["workers"]}) == WORKERS
    assert served.stop() == 0


def test_status_is_the_same_on_every_call_and_names_every_worker(
    serve: Callable[..., ServeProcess], start_backend: Callable[..., BackendProcess]
) -> None:
    a1 = start_backend("a1")
    served = serve("--workers", str(WORKERS))
    served.publish({"a": node(a1)}, {"w": alias(("a", 1))})
    for _ in range(30):
        assert fresh_get(served.port, "/aliases/w/x") == 200

    def without_uptime(document: dict[str, Any]) -> dict[str, Any]:
        # Rates describe the last seconds and move with the clock; totals must not move.
        for entry in document["nodes"]:
            entry["traffic"] = {k: entry["traffic"][k] for k in ("requests", "errors")}
        return {k: v for k, v in document.items() if k != "uptimeSeconds"}

    first = without_uptime(served.status())
    assert first["nodes"][0]["traffic"] == {"requests": 30, "errors": 0}  # every worker's
    assert len(first["workers"]) == WORKERS
    assert {w["generation"] for w in first["workers"]} == {1}
    assert all(w["healthy"] == ["a1"] and w["answered"] for w in first["workers"])
    for _ in range(20):  # new connections each time: today's kernel spreads them
        assert without_uptime(served.status()) == first
    assert served.stop() == 0


def test_a_failed_worker_stops_the_others(serve: Callable[..., ServeProcess]) -> None:
    served = serve("--workers", str(WORKERS))
    wait_until(
        lambda: [w for w in served.status()["workers"] if w["answered"]][WORKERS - 1 :],
        "every worker to answer",
        20.0,
        0.05,
    )
    pids = [w["pid"] for w in served.status()["workers"]]
    os.kill(pids[-1], signal.SIGKILL)
    assert served.process is not None
    served.process.wait(timeout=40)
    assert served.process.returncode != 0
    for pid in pids:

        def exited(pid: int = pid) -> bool:
            return not _alive(pid)

        wait_until(exited, f"worker {pid} to exit", 20.0, 0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
