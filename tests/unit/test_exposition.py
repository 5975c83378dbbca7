"""The Prometheus text format both ways (balancer/exposition.py) and how the balancer re-exposes
instances' telemetry (balancer/telemetry.py's pure part), checked with tests/promtext.py."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from balancer.exposition import ExpositionError, Merger, parse, relabel
from balancer.metrics import FAMILIES, Metrics
from balancer.table import Endpoint, HealthSettings, NodeEntry, RoutingTable
from balancer.telemetry import Scrape, Target, render, targets
from tests import promtext

INSTANCE_TEXT = """\
# HELP model_predictions_total Predictions made, by outcome.
# TYPE model_predictions_total counter
model_predictions_total{outcome="ok"} 7
model_predictions_total{outcome="fail",detail="a \\"quoted\\" \\\\ back\\nslash"} 1 1700000000000
# A comment that is not HELP or TYPE
# TYPE model_latency_seconds histogram
model_latency_seconds_bucket{le="0.1"} 2
model_latency_seconds_bucket{le="+Inf"} 3
model_latency_seconds_sum 0.42
model_latency_seconds_count 3
# TYPE model_quantiles summary
model_quantiles{quantile="0.5"} 0.01
model_quantiles_sum 1.5
model_quantiles_count 10
process_open_fds 12
# TYPE temperature gauge
temperature{node_id="inner",instance_id="x"} -Inf
"""


def target(node: str = "iris", instance: str = "iris-0") -> Target:
    return Target(node, instance, "127.0.0.1", 9100, "/metrics")


# --- parsing -------------------------------------------------------------------------------


def test_a_valid_exposition_parses_into_families_in_order() -> None:
    families = parse(INSTANCE_TEXT)

    assert [(f.name, f.type) for f in families] == [
        ("model_predictions_total", "counter"),
        ("model_latency_seconds", "histogram"),
        ("model_quantiles", "summary"),
        ("process_open_fds", "untyped"),
        ("temperature", "gauge"),
    ]
    predictions = families[0]
    assert predictions.help == "Predictions made, by outcome."
    failed = predictions.samples[1]
    assert failed.labels == (("outcome", "fail"), ("detail", 'a "quoted" \\ back\nslash'))
    assert (failed.value, failed.timestamp) == ("1", "1700000000000")
    assert [s.name for s in families[1].samples] == [
        "model_latency_seconds_bucket",
        "model_latency_seconds_bucket",
        "model_latency_seconds_sum",
        "model_latency_seconds_count",
    ]
    assert len(families[2].samples) == 3
    assert families[4].samples[0].value == "-Inf"


def test_blank_lines_spaces_and_a_trailing_comma_are_accepted() -> None:
    families = parse('\n  a{x = "1" , y="2",} 1.5e3  \r\n\n# TYPE b gauge\nb 0\n')

    assert [(f.name, [(s.labels, s.value) for s in f.samples]) for f in families] == [
        ("a", [((("x", "1"), ("y", "2")), "1.5e3")]),
        ("b", [((), "0")]),
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("# TYPE a counter\n# TYPE a counter\na 1\n", "line 2: a second TYPE line for a"),
        ("# HELP a x\n# HELP a y\n", "line 2: a second HELP line for a"),
        ("a 1\n# TYPE a counter\n", "line 2: the TYPE line of a comes after its samples"),
        ('h_bucket{le="1"} 1\n# TYPE h histogram\n', "line 2: the TYPE line of h comes after"),
        ("# TYPE a countr\n", "line 1: TYPE of a must be one of"),
        ("# TYPE 9a counter\n", "line 1: # TYPE needs a metric name, got '9a'"),
        ('a{x="1\\t"} 1\n', "line 1: invalid escape \\t in the value of label x"),
        ('a{x="1} 1\n', "line 1: the value of label x has no closing quote"),
        ("a{x=1} 1\n", "line 1: expected a quoted value for label x"),
        ('a{x="1",x="2"} 1\n', "line 1: label x appears twice"),
        ('a{x="1" y="2"} 1\n', "line 1: expected ',' or '}' after label x"),
        ('a{9="1"} 1\n', "line 1: expected a label name at column 3"),
        ("a one\n", "line 1: 'one' is not a number"),
        ("a 1_000\n", "line 1: '1_000' is not a number"),
        ("a 1 12.5\n", "line 1: '12.5' is not a timestamp in milliseconds"),
        ("a 1 2 3\n", "line 1: expected a value and at most a timestamp"),
        ("a{} \n", "line 1: expected a space and a value after 'a{}'"),
        ("a\n", "line 1: expected a space and a value after 'a'"),
        ('{x="1"} 1\n', "line 1: expected a metric name at the start"),
        ("# TYPE h histogram\nh_bucket 1\n", "line 2: h_bucket has no le label"),
        ("# TYPE h histogram\nh 1\n", "line 2: histogram h cannot have a sample named h"),
        ("# HELP a bad \\escape\n", "line 1: invalid escape \\e in a HELP line"),
    ],
)
def test_invalid_text_is_an_error_naming_the_line(text: str, problem: str) -> None:
    with pytest.raises(ExpositionError) as caught:
        parse(text)
    assert str(caught.value).startswith(problem), str(caught.value)


def test_the_balancers_own_metrics_are_strict_text_with_the_reference_names() -> None:
    metrics = Metrics(inflight=lambda: {"iris": 2, 'we"ird': 0})
    metrics.observe("front", "iris", 200, 0.004)
    metrics.observe("front", "iris", 503, 12.0)
    metrics.observe('al\\ias\n"x"', None, 502, 0.2)
    metrics.observe(None, "wine", 404, 0.0)
    metrics.observe(None, None, 404, 0.0)

    families = promtext.read(metrics.render())

    for kind, label in (("node", "node_id"), ("alias", "alias_name")):
        # The reference's family names, counters with the _total suffix of OpenMetrics.
        assert families[f"{kind}_requests_total"].type == "counter"
        assert families[f"{kind}_http_codes_total"].type == "counter"
        assert families[f"{kind}_errors_total"].type == "counter"
        assert families[f"{kind}_request_durations"].type == "histogram"
        for family in ("requests_total", "http_codes_total", "request_durations"):
            assert all(label in labels for _, labels, _ in families[f"{kind}_{family}"].samples)
    codes = families["node_http_codes_total"]
    assert codes.value("node_http_codes_total", node_id="iris", code="503") == 1
    durations = families["node_request_durations"]
    assert durations.value("node_request_durations_bucket", node_id="iris", le="0.005") == 1
    assert durations.value("node_request_durations_bucket", node_id="iris", le="+Inf") == 2
    assert durations.value("node_request_durations_sum", node_id="iris") == 12.004
    alias = families["alias_requests_total"]
    assert alias.value("alias_requests_total", alias_name='al\\ias\n"x"') == 1


# --- relabelling and merging ------------------------------------------------------------------


def test_source_labels_come_first_and_clashing_ones_are_exported() -> None:
    source = (("node_id", "iris"), ("instance_id", "iris-0"))
    own = (("node_id", "inner"), ("exported_node_id", "taken"), ("code", "200"))

    assert relabel(own, source) == (
        ("node_id", "iris"),
        ("instance_id", "iris-0"),
        ("exported_exported_node_id", "inner"),
        ("exported_node_id", "taken"),
        ("code", "200"),
    )
    assert relabel((), source) == source


def test_merging_two_instances_declares_each_family_once_with_samples_together() -> None:
    merger = Merger()
    first = parse("# HELP up_total Ups.\n# TYPE up_total counter\nup_total 1\nother 5\n")
    second = parse("# TYPE up_total counter\nup_total 2\n")

    assert merger.add(first, (("instance_id", "a"),)) == (2, 0)
    assert merger.add(second, (("instance_id", "b"),)) == (1, 0)

    assert merger.render() == (
        "# TYPE other untyped\n"
        'other{instance_id="a"} 5\n'
        "# HELP up_total Ups.\n"
        "# TYPE up_total counter\n"
        'up_total{instance_id="a"} 1\n'
        'up_total{instance_id="b"} 2\n'
    )


def test_families_clashing_in_type_or_with_reserved_names_are_dropped() -> None:
    merger = Merger(["node_requests", "node_request_durations_bucket"])
    text = (
        "# TYPE node_requests counter\nnode_requests 3\n"
        'node_request_durations_bucket{le="+Inf"} 1\n'
        "# TYPE load gauge\nload 1\n"
    )
    assert merger.add(parse(text), (("instance_id", "a"),)) == (1, 2)
    assert merger.add(parse("# TYPE load counter\nload 9\n"), (("instance_id", "b"),)) == (0, 1)
    # A histogram's _count is its own; an untyped family of that name cannot have it too.
    assert merger.add(parse("# TYPE h histogram\nh_count 1\nh_sum 1\n"), ()) == (2, 0)
    assert merger.add(parse("h_count 5\n"), (("instance_id", "c"),)) == (0, 1)

    rendered = merger.render()
    assert "node_requests" not in rendered
    assert 'load{instance_id="b"}' not in rendered
    promtext.read(rendered)


# --- what /-/metrics adds for the instances -------------------------------------------------


def test_instances_are_relabelled_and_failures_reported_in_valid_text() -> None:
    scrapes = [
        Scrape(target("iris", "iris-0"), INSTANCE_TEXT, None, 0.0123),
        Scrape(target("iris", "iris-1"), INSTANCE_TEXT.replace(" 7\n", " 9\n"), None, 0.01),
        Scrape(target("iris", "iris-2"), None, "GET /metrics on port 9100 answered 500", 0.002),
        Scrape(target("wine", "wine-0"), "not { prometheus\n", None, 0.001),
    ]
    metrics = Metrics()
    metrics.observe("front", "iris", 200, 0.01)

    text = metrics.render() + render(scrapes, FAMILIES)

    families = promtext.read(text)
    up = families["node_telemetry_up"]
    assert up.type == "gauge"
    assert [(labels["instance_id"], value) for _, labels, value in up.samples] == [
        ("iris-0", 1.0),
        ("iris-1", 1.0),
        ("iris-2", 0.0),
        ("wine-0", 0.0),
    ]
    samples = families["node_telemetry_samples"]
    assert samples.value("node_telemetry_samples", node_id="iris", instance_id="iris-0") == 11
    predictions = families["model_predictions_total"]
    assert predictions.type == "counter" and predictions.help == "Predictions made, by outcome."
    assert (
        predictions.value(
            "model_predictions_total", node_id="iris", instance_id="iris-1", outcome="ok"
        )
        == 9
    )
    assert (
        predictions.value(
            "model_predictions_total",
            node_id="iris",
            instance_id="iris-0",
            outcome="fail",
            detail='a "quoted" \\ back\nslash',
        )
        == 1
    )
    temperature = families["temperature"]
    assert temperature.samples[0][1] == {
        "node_id": "iris",
        "instance_id": "iris-0",
        "exported_node_id": "inner",
        "exported_instance_id": "x",
    }
    histogram = families["model_latency_seconds"]
    assert histogram.value("model_latency_seconds_count", node_id="iris", instance_id="iris-1") == 3
    assert families["node_requests_total"].value("node_requests_total", node_id="iris") == 1
    lines = text.splitlines()
    assert "# telemetry of iris/iris-2: GET /metrics on port 9100 answered 500" in lines
    assert any(
        line.startswith("# telemetry of wine/wine-0: GET /metrics is not Prometheus text format:")
        for line in lines
    )


def test_an_instance_using_the_balancers_names_cannot_override_them() -> None:
    text = "# TYPE node_requests counter\nnode_requests 1000\n# TYPE mine gauge\nmine 1\n"
    metrics = Metrics()
    metrics.observe(None, "iris", 200, 0.01)

    rendered = render([Scrape(target(), text, None, 0.0)], FAMILIES)
    families = promtext.read(metrics.render() + rendered)

    assert [s[1] for s in families["node_requests_total"].samples] == [{"node_id": "iris"}]
    dropped = families["node_telemetry_samples_dropped"]
    labels = {"node_id": "iris", "instance_id": "iris-0"}
    assert dropped.value("node_telemetry_samples_dropped", **labels) == 1
    assert families["mine"].value("mine", node_id="iris", instance_id="iris-0") == 1


def test_targets_are_the_instances_of_nodes_with_a_telemetry_path() -> None:
    health = HealthSettings()
    table = RoutingTable(
        3,
        MappingProxyType(
            {
                "plain": NodeEntry((Endpoint("plain-0", "127.0.0.1", 3000),), 1, health),
                "iris": NodeEntry(
                    (
                        Endpoint("iris-1", "127.0.0.1", 3002, telemetry_port=4002),
                        Endpoint("iris-0", "127.0.0.1", 3001),
                    ),
                    1,
                    health,
                    telemetry_path="/stats/prom",
                ),
            }
        ),
    )

    assert targets(table) == [
        Target("iris", "iris-0", "127.0.0.1", 3001, "/stats/prom"),
        Target("iris", "iris-1", "127.0.0.1", 4002, "/stats/prom"),
    ]
    assert render([], FAMILIES).startswith("# HELP node_telemetry_up")
