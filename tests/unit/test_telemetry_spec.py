"""`spec.telemetry` from YAML to the routing table: loading, bad input, the spec hash, the
table's format, and what plan does when it changes (pure: no Docker)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from balancer.table import Endpoint, HealthSettings, NodeEntry, RoutingTable, TableError
from gitops_nodes.diff import Action, FieldChange
from gitops_nodes.health import settings_from
from gitops_nodes.live import LiveInstance, LiveState
from gitops_nodes.plan import make_plan
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.hashing import InstanceConfig, canonical_json, spec_hash
from gitops_nodes.spec.load import load_spec
from gitops_nodes.spec.state import DesiredState

WriteRepo = Callable[[dict[str, str]], Path]
PROJECT = "proj"


def node(telemetry: str = "", name: str = "iris") -> str:
    """A Node document; telemetry's lines (indented by 2) start at line 9."""
    return (
        f"apiVersion: gitops-nodes/v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n"
        "  image:\n    name: busybox\n    port: 8080\n" + telemetry
    )


def load(write_repo: WriteRepo, text: str) -> DesiredState:
    return load_spec(write_repo({"s.yaml": text}))


def problems(write_repo: WriteRepo, text: str) -> list[str]:
    with pytest.raises(SpecErrors) as caught:
        load(write_repo, text)
    return [str(p) for p in caught.value.problems]


# --- loading -----------------------------------------------------------------------------


def test_a_telemetry_port_is_published_and_hashed_and_the_path_defaults(
    write_repo: WriteRepo,
) -> None:
    plain = load(write_repo, node()).nodes["iris"]
    scraped = load(write_repo, node("  telemetry: {port: 9100}\n")).nodes["iris"]

    assert plain.telemetry_path is None and plain.config.telemetry_port is None
    assert scraped.telemetry_path == "/metrics"
    assert scraped.config.telemetry_port == 9100
    assert scraped.spec_hash != plain.spec_hash  # a new published port needs new containers


def test_without_a_port_or_with_the_serving_one_nothing_more_is_published(
    write_repo: WriteRepo,
) -> None:
    plain = load(write_repo, node()).nodes["iris"]
    for telemetry in ("  telemetry: {path: /stats}\n", "  telemetry: {path: /stats, port: 8080}\n"):
        scraped = load(write_repo, node(telemetry)).nodes["iris"]
        assert scraped.telemetry_path == "/stats"
        assert scraped.config == plain.config
        assert scraped.spec_hash == plain.spec_hash  # the path alone never recreates
        assert scraped.digest != plain.digest  # but plan sees it changed


def test_nodes_without_telemetry_keep_the_hash_they_had() -> None:
    config = InstanceConfig("busybox", 8080, None, (("A", "1"),), None, None)
    # The projection as it was before spec.telemetry existed: no key for it at all.
    before = {
        "scheme": 1,
        "image": "busybox",
        "port": 8080,
        "command": None,
        "env": {"A": "1"},
        "cpus": None,
        "memory": None,
    }

    assert spec_hash(config) == hashlib.sha256(canonical_json(before).encode()).hexdigest()
    with_port = replace(config, telemetry_port=9100)
    assert spec_hash(with_port) != spec_hash(config)
    back = InstanceConfig.from_dict(json.loads(json.dumps(with_port.as_dict())))
    assert back == with_port and spec_hash(back) == spec_hash(with_port)


@pytest.mark.parametrize(
    ("telemetry", "expected"),
    [
        (
            "  telemetry: {path: metrics}\n",
            "s.yaml:9:21: spec.telemetry.path: expected a URL path starting with / such as "
            "/healthz (no spaces or control characters; others percent-encoded), got 'metrics'",
        ),
        (
            "  telemetry: {path: /my metrics}\n",
            "s.yaml:9:21: spec.telemetry.path: "
            "expected a URL path starting with / such as /healthz (no spaces or control "
            "characters; others percent-encoded), got '/my metrics'",
        ),
        (
            "  telemetry: {port: 0}\n",
            "s.yaml:9:21: spec.telemetry.port: expected a value ≥ 1, got 0",
        ),
        (
            "  telemetry: {port: '9100'}\n",
            "s.yaml:9:21: spec.telemetry.port: expected an integer, got '9100'",
        ),
        (
            "  telemetry: {interval: 5s}\n",
            "s.yaml:9:15: spec.telemetry.interval: unknown field; expected one of: path, port",
        ),
        (
            "  telemetry: /metrics\n",
            "s.yaml:9:14: spec.telemetry: expected a mapping, got '/metrics'",
        ),
    ],
    ids=["relative path", "path with a space", "port 0", "port as text", "unknown", "not a map"],
)
def test_bad_telemetry_is_reported_with_its_position(
    write_repo: WriteRepo, telemetry: str, expected: str
) -> None:
    found = problems(write_repo, node(telemetry))
    assert found == [expected]


# --- the routing table -------------------------------------------------------------------


def test_the_table_carries_the_path_and_the_telemetry_ports() -> None:
    table = RoutingTable(
        2,
        MappingProxyType(
            {
                "iris": NodeEntry(
                    (
                        Endpoint("iris-0", "127.0.0.1", 30000, telemetry_port=30001),
                        Endpoint("iris-1", "127.0.0.1", 30002),
                    ),
                    1,
                    HealthSettings(),
                    telemetry_path="/metrics",
                ),
                "wine": NodeEntry((Endpoint("wine-0", "127.0.0.1", 30003),), 1, HealthSettings()),
            }
        ),
    )
    data = json.loads(json.dumps(table.to_json()))

    assert RoutingTable.from_json(data) == table
    assert data["nodes"]["iris"]["telemetryPath"] == "/metrics"
    assert data["nodes"]["iris"]["endpoints"][0]["telemetryPort"] == 30001
    assert "telemetryPort" not in data["nodes"]["iris"]["endpoints"][1]
    assert data["nodes"]["wine"]["telemetryPath"] is None


def test_a_table_written_before_telemetry_still_reads() -> None:
    data = RoutingTable(
        1, MappingProxyType({"w": NodeEntry((Endpoint("w-0", "h", 1),), 1, HealthSettings())})
    ).to_json()
    del data["nodes"]["w"]["telemetryPath"]

    entry = RoutingTable.from_json(data).nodes["w"]

    assert entry.telemetry_path is None and entry.endpoints[0].telemetry_port is None


def test_a_telemetry_path_that_is_not_a_path_is_a_table_error() -> None:
    data = RoutingTable(1, MappingProxyType({"w": NodeEntry((), 1, HealthSettings())})).to_json()
    data["nodes"]["w"]["telemetryPath"] = 42
    with pytest.raises(TableError, match="telemetryPath 42 is not a path"):
        RoutingTable.from_json(data)


# --- plan ----------------------------------------------------------------------------------


def live_for(state: DesiredState, telemetry_port: int | None = None) -> LiveState:
    """The node's one instance running, and the table apply would have published for it."""
    iris = state.nodes["iris"]
    instance = LiveInstance(
        f"{PROJECT}-iris-0",
        "iris",
        0,
        iris.spec_hash,
        iris.config,
        "running",
        30000,
        telemetry_port=telemetry_port,
    )
    entry = NodeEntry(
        (Endpoint(instance.name, "127.0.0.1", 30000, telemetry_port),),
        iris.min_healthy,
        settings_from(iris.health_check),
        telemetry_path=iris.telemetry_path,
    )
    table = RoutingTable(3, MappingProxyType({"iris": entry}))
    return LiveState(PROJECT, (instance,), table=table)


def test_plan_after_apply_is_empty_with_telemetry(write_repo: WriteRepo) -> None:
    state = load(write_repo, node("  telemetry: {path: /m, port: 9100}\n"))
    assert make_plan(PROJECT, state, live_for(state, telemetry_port=30001)).empty


def test_a_new_path_is_an_update_in_place(write_repo: WriteRepo) -> None:
    before = load(write_repo, node("  telemetry: {path: /old}\n"))
    after = load(write_repo, node("  telemetry: {path: /new}\n"))

    plan = make_plan(PROJECT, after, live_for(before))

    [change] = plan.diff.nodes
    assert change.action is Action.UPDATE and change.publish_settings
    assert change.instances == ()
    assert change.fields == (FieldChange("telemetry.path", "/old", "/new"),)


def test_a_new_telemetry_port_replaces_the_instances(write_repo: WriteRepo) -> None:
    before = load(write_repo, node("  telemetry: {port: 9100}\n"))
    after = load(write_repo, node("  telemetry: {port: 9200}\n"))

    plan = make_plan(PROJECT, after, live_for(before, telemetry_port=30001))

    [change] = plan.diff.nodes
    assert change.action is Action.REPLACE
    assert FieldChange("telemetry.port", 9100, 9200, forces_replacement=True) in change.fields


def test_a_moved_telemetry_port_is_republished(write_repo: WriteRepo) -> None:
    state = load(write_repo, node("  telemetry: {port: 9100}\n"))
    live = live_for(state, telemetry_port=30001)
    moved = replace(live.instances[0], telemetry_port=30009)  # the engine restarted it

    plan = make_plan(PROJECT, state, LiveState(PROJECT, (moved,), table=live.table))

    [change] = plan.diff.nodes
    assert change.action is Action.UPDATE and change.publish_settings
    assert change.reason == "its instances' ports moved"
