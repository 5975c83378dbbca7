"""The balancer's metrics (counting and Prometheus text) and its control plane's endpoints."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from balancer.backends import Backends
from balancer.control import ControlSource, make_control_app, node_status, status_document
from balancer.exposition import escape_label
from balancer.metrics import BUCKETS, Metrics
from balancer.proxy import ProxySettings
from balancer.routing import Router
from balancer.table import AliasEntry, Endpoint, HealthSettings, NodeEntry, RoutingTable

# --- metrics -------------------------------------------------------------------------------


def samples(text: str) -> list[str]:
    """The sample lines of a rendering (no comments, no blank line)."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_one_observation_renders_exact_lines() -> None:
    metrics = Metrics()
    metrics.observe("front", "web", 200, 0.003)
    text = metrics.render()
    lines = samples(text)
    assert 'node_requests_total{node_id="web"} 1' in lines
    assert 'node_http_codes_total{node_id="web",code="200"} 1' in lines
    assert 'node_errors_total{node_id="web"} 0' in lines
    assert 'alias_requests_total{alias_name="front"} 1' in lines
    assert 'alias_http_codes_total{alias_name="front",code="200"} 1' in lines
    histogram = [line for line in lines if line.startswith("node_request_durations")]
    assert histogram == [
        'node_request_durations_bucket{node_id="web",le="0.001"} 0',
        'node_request_durations_bucket{node_id="web",le="0.0025"} 0',
        'node_request_durations_bucket{node_id="web",le="0.005"} 1',
        'node_request_durations_bucket{node_id="web",le="0.01"} 1',
        'node_request_durations_bucket{node_id="web",le="0.025"} 1',
        'node_request_durations_bucket{node_id="web",le="0.05"} 1',
        'node_request_durations_bucket{node_id="web",le="0.1"} 1',
        'node_request_durations_bucket{node_id="web",le="0.25"} 1',
        'node_request_durations_bucket{node_id="web",le="0.5"} 1',
        'node_request_durations_bucket{node_id="web",le="1.0"} 1',
        'node_request_durations_bucket{node_id="web",le="2.5"} 1',
        'node_request_durations_bucket{node_id="web",le="5.0"} 1',
        'node_request_durations_bucket{node_id="web",le="10.0"} 1',
        'node_request_durations_bucket{node_id="web",le="30.0"} 1',
        'node_request_durations_bucket{node_id="web",le="+Inf"} 1',
        'node_request_durations_sum{node_id="web"} 0.003',
        'node_request_durations_count{node_id="web"} 1',
    ]
    assert "# TYPE node_request_durations histogram" in text
    assert "# TYPE alias_requests_total counter" in text
    assert "# TYPE balancer_table_generation gauge" in text
    assert text.endswith("\n")


def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    metrics = Metrics()
    for seconds in (0.0005, 0.005, 0.0051, 0.7, 31.0, 0.005):
        metrics.observe(None, "n", 200, seconds)
    lines = samples(metrics.render())
    buckets = {
        match.group(1): int(match.group(2))
        for line in lines
        if (
            match := re.fullmatch(
                r'node_request_durations_bucket\{node_id="n",le="([^"]+)"\} (\d+)', line
            )
        )
    }
    assert len(buckets) == len(BUCKETS) + 1
    assert buckets["0.001"] == 1
    assert buckets["0.005"] == 3  # a duration equal to a bound falls in that bucket (le)
    assert buckets["0.01"] == 4
    assert buckets["0.5"] == 4
    assert buckets["1.0"] == 5
    assert buckets["30.0"] == 5
    assert buckets["+Inf"] == 6
    values = list(buckets.values())
    assert values == sorted(values)
    assert 'node_request_durations_count{node_id="n"} 6' in lines
    (total,) = [line for line in lines if line.startswith("node_request_durations_sum")]
    assert abs(float(total.split()[-1]) - 31.7156) < 1e-9


def test_codes_errors_and_requests_without_a_node_or_alias() -> None:
    metrics = Metrics()
    metrics.observe("front", "web", 200, 0.01)
    metrics.observe("front", "web", 502, 0.01)
    metrics.observe("front", None, 503, 0.001)  # nothing Healthy behind the alias
    metrics.observe(None, "web", 504, 0.01)  # by /nodes/web/
    metrics.observe(None, None, 404, 0.0001)  # unknown alias or node
    lines = samples(metrics.render())
    assert 'node_requests_total{node_id="web"} 3' in lines
    assert 'node_errors_total{node_id="web"} 2' in lines
    assert 'alias_requests_total{alias_name="front"} 3' in lines
    assert 'alias_errors_total{alias_name="front"} 2' in lines
    codes = [line for line in lines if line.startswith("alias_http_codes_total")]
    assert codes == [
        'alias_http_codes_total{alias_name="front",code="200"} 1',
        'alias_http_codes_total{alias_name="front",code="502"} 1',
        'alias_http_codes_total{alias_name="front",code="503"} 1',
    ]
    assert 'balancer_unrouted_requests_total{code="404"} 1' in lines


def test_label_values_are_escaped() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    metrics = Metrics(inflight=lambda: {'x"y': 2})
    metrics.observe('we"ird\\al\nias', 'no"de', 200, 0.01)
    lines = samples(metrics.render())
    assert 'node_requests_total{node_id="no\\"de"} 1' in lines
    assert 'alias_requests_total{alias_name="we\\"ird\\\\al\\nias"} 1' in lines
    assert 'balancer_inflight_requests{node_id="x\\"y"} 2' in lines


def test_rendering_is_deterministic_and_sorted() -> None:
    names = ["zeta", "alpha", "mid", "beta"]
    first, second = Metrics(), Metrics()
    for name in names:
        first.observe(name, name, 500, 0.2)
        first.observe(name, name, 200, 0.02)
    for name in reversed(names):
        second.observe(name, name, 200, 0.02)
        second.observe(name, name, 500, 0.2)
    assert first.render() == second.render()
    order = [
        line.split('"')[1]
        for line in samples(first.render())
        if line.startswith("node_requests_total")
    ]
    assert order == sorted(names)
    assert 'node_http_codes_total{node_id="alpha",code="200"} 1' in first.render()


SAMPLE_LINE = r'[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)+\})? [0-9.e+-]+'


def test_every_family_is_declared_before_its_samples() -> None:
    metrics = Metrics(inflight=lambda: {"web": 3, "api": 0})
    metrics.observe("front", "web", 200, 0.01)
    metrics.observe(None, None, 404, 0.01)
    declared: set[str] = set()
    families: list[str] = []
    for line in metrics.render().splitlines():
        if line.startswith("# HELP "):
            families.append(line.split()[2])
        elif line.startswith("# TYPE "):
            declared.add(line.split()[2])
        elif line:
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in declared or base in declared, line
            assert re.fullmatch(SAMPLE_LINE, line), line
    assert families == [
        "node_requests_total",
        "node_http_codes_total",
        "node_request_durations",
        "node_errors_total",
        "alias_requests_total",
        "alias_http_codes_total",
        "alias_request_durations",
        "alias_errors_total",
        "balancer_unrouted_requests_total",
        "balancer_reloads_total",
        "balancer_rejected_reloads_total",
        "balancer_table_generation",
        "balancer_inflight_requests",
    ]


def test_reloads_generation_and_inflight() -> None:
    metrics = Metrics(inflight=lambda: {"web": 3})
    metrics.reloaded(7)
    metrics.reloaded(8)
    metrics.rejected_reload()
    lines = samples(metrics.render())
    assert "balancer_reloads_total 2" in lines
    assert "balancer_rejected_reloads_total 1" in lines
    assert "balancer_table_generation 8" in lines
    assert 'balancer_inflight_requests{node_id="web"} 3' in lines
    # A callable given to render wins over the constructor's.
    lines = samples(metrics.render(lambda: {"b": 1, "a": 0}))
    inflight = [line for line in lines if line.startswith("balancer_inflight_requests")]
    assert inflight == [
        'balancer_inflight_requests{node_id="a"} 0',
        'balancer_inflight_requests{node_id="b"} 1',
    ]


def test_names_beyond_the_limit_do_not_become_series() -> None:
    metrics = Metrics(max_names=2)
    for alias in ("a", "b", "c", "d"):
        metrics.observe(alias, None, 404, 0.001)
    metrics.observe("c", "n", 200, 0.001)
    lines = samples(metrics.render())
    assert [line for line in lines if line.startswith("alias_requests_total")] == [
        'alias_requests_total{alias_name="a"} 1',
        'alias_requests_total{alias_name="b"} 1',
    ]
    assert 'balancer_unrouted_requests_total{code="404"} 2' in lines
    assert 'node_requests_total{node_id="n"} 1' in lines


# --- the control plane ---------------------------------------------------------------------

CHECKS = HealthSettings(path="/healthz", interval=1.0)


def make_table(generation: int, *, with_old: bool) -> RoutingTable:
    web = [Endpoint("web-0", "127.0.0.1", 31000), Endpoint("web-1", "127.0.0.1", 31001)]
    if with_old:
        web.append(Endpoint("web-old", "127.0.0.1", 31009))
    return RoutingTable(
        generation=generation,
        nodes=MappingProxyType(
            {
                "web": NodeEntry(tuple(web), 1, CHECKS),
                "fresh": NodeEntry((Endpoint("fresh-0", "127.0.0.1", 32000),), 1, CHECKS),
                "pair": NodeEntry(
                    (
                        Endpoint("pair-0", "127.0.0.1", 33000),
                        Endpoint("pair-1", "127.0.0.1", 33001),
                    ),
                    2,
                    CHECKS,
                ),
            }
        ),
        aliases=MappingProxyType(
            {
                "front": AliasEntry((("web", 90), ("fresh", 10)), "x-user"),
                "back": AliasEntry((("pair", 100),)),
            }
        ),
    )


@dataclass
class Source:
    """A running balancer's state as the control plane sees it."""

    router: Router
    backends: Backends
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=lambda: time.time() - 12.5)
    reloads: int = 2
    last_reload_error: str | None = "table.json is not valid JSON: Expecting value"
    draining: bool = False
    limits: dict[str, float | int] = field(default_factory=lambda: ProxySettings().limits())


def make_source() -> Source:
    backends = Backends()
    backends.reconcile(make_table(4, with_old=True))
    backends.reconcile(make_table(5, with_old=False))  # web-old is now removed, draining
    by_name = {b.instance: b for b in backends.by_key.values()}
    by_name["web-0"].mark_healthy()
    by_name["web-0"].inflight = 2
    by_name["web-1"].mark_unhealthy("connection refused")
    by_name["pair-0"].mark_healthy()
    by_name["pair-1"].mark_unhealthy("timed out after 1.0 s")
    by_name["web-old"].inflight = 1
    router = Router(make_table(5, with_old=False), backends)
    return Source(router, backends)


def test_source_satisfies_the_protocol() -> None:
    source: ControlSource = make_source()
    assert source.router.generation == 5


def test_node_status_rules() -> None:
    source = make_source()
    nodes = source.router.nodes
    assert node_status(nodes["web"].backends, 1) == "Healthy"
    assert node_status(nodes["fresh"].backends, 1) == "Created"  # never checked
    assert node_status(nodes["pair"].backends, 2) == "Unhealthy"  # 1 Healthy of 2 needed
    assert node_status(nodes["web"].backends, 0) == "Healthy"
    assert node_status([], 0) == "Created"
    nodes["web"].backends[0].mark_unhealthy("reset")
    assert node_status(nodes["web"].backends, 0) == "Unhealthy"  # none Healthy is never Healthy


def test_status_document() -> None:
    document = status_document(make_source())
    assert document["generation"] == 5
    assert document["reloads"] == 2
    assert document["lastReloadError"].startswith("table.json is not valid JSON")
    assert 12.0 <= document["uptimeSeconds"] < 60
    assert document["aliases"] == [
        {
            "name": "back",
            "affinityHeader": None,
            "access": None,
            "nodes": [{"node": "pair", "weight": 100, "status": "Unhealthy"}],
        },
        {
            "name": "front",
            "affinityHeader": "x-user",
            "access": None,
            "nodes": [
                {"node": "web", "weight": 90, "status": "Healthy"},
                {"node": "fresh", "weight": 10, "status": "Created"},
            ],
        },
    ]
    assert [n["name"] for n in document["nodes"]] == ["fresh", "pair", "web"]
    web = document["nodes"][2]
    assert web["status"] == "Healthy"
    assert web["minHealthy"] == 1
    assert web["instances"] == [
        {
            "instance": "web-0",
            "address": "127.0.0.1:31000",
            "status": "Healthy",
            "inflight": 2,
            "lastError": None,
        },
        {
            "instance": "web-1",
            "address": "127.0.0.1:31001",
            "status": "Unhealthy",
            "inflight": 0,
            "lastError": "connection refused",
        },
    ]
    assert document["nodes"][0]["instances"][0]["status"] == "Started"
    assert document["nodes"][1]["minHealthy"] == 2
    assert document["draining"] == [
        {
            "node": "web",
            "instance": "web-old",
            "address": "127.0.0.1:31009",
            "status": "Deleting",
            "inflight": 1,
            "lastError": None,
        }
    ]
    json.dumps(document)  # all of it is JSON


# A tiny ASGI driver: httpx (and so Starlette's TestClient) is not installed here.


@dataclass
class Reply:
    """One HTTP response as the ASGI app sent it."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(app: Any, method: str, path: str) -> Reply:
    """Send one request without a body to an ASGI app and collect its response."""

    async def run() -> Reply:
        done = asyncio.Event()
        requested = False
        messages: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1:9901")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 9901),
        }
        await app(scope, receive, send)
        start = messages[0]
        assert start["type"] == "http.response.start"
        headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        body = b"".join(m.get("body", b"") for m in messages[1:])
        return Reply(start["status"], headers, body)

    return asyncio.run(run())


def test_healthz() -> None:
    source = make_source()
    app = make_control_app(source)
    reply = call(app, "GET", "/-/healthz")
    assert (reply.status, reply.json()) == (200, {"status": "ok"})
    assert reply.headers["content-type"] == "application/json"
    source.draining = True
    reply = call(app, "GET", "/-/healthz")
    assert (reply.status, reply.json()) == (503, {"status": "draining"})


def test_status_endpoint_serves_the_document_of_the_current_router() -> None:
    source = make_source()
    app = make_control_app(source)
    reply = call(app, "GET", "/-/status")
    assert reply.status == 200
    served = reply.json()
    expected = status_document(source)
    served.pop("uptimeSeconds")
    expected.pop("uptimeSeconds")
    assert served == expected
    source.router = Router(make_table(9, with_old=False), source.backends)  # a swap
    assert call(app, "GET", "/-/status").json()["generation"] == 9


def test_metrics_endpoint() -> None:
    source = make_source()
    source.metrics.observe("front", "web", 200, 0.02)
    source.metrics.reloaded(5)
    reply = call(make_control_app(source), "GET", "/-/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = samples(reply.body.decode())
    assert 'alias_requests_total{alias_name="front"} 1' in lines
    assert "balancer_table_generation 5" in lines
    inflight = [line for line in lines if line.startswith("balancer_inflight_requests")]
    assert inflight == [  # every node of the table; web counts its draining instance too
        'balancer_inflight_requests{node_id="fresh"} 0',
        'balancer_inflight_requests{node_id="pair"} 0',
        'balancer_inflight_requests{node_id="web"} 3',
    ]


def test_unknown_paths_and_methods_answer_json_errors() -> None:
    app = make_control_app(make_source())
    for path in ("/-/nope", "/-/status/extra", "/aliases/front/predict"):
        reply = call(app, "GET", path)
        assert reply.status == 404, path
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == {"error": f"no such endpoint: {path}"}
    reply = call(app, "POST", "/-/status")
    assert reply.status == 405
    assert "error" in reply.json()
    assert "GET" in reply.headers["allow"]
    assert call(app, "HEAD", "/-/healthz").status == 200
