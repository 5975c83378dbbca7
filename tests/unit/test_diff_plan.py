"""Desired x live -> diff -> plan: what changes, and the order that keeps traffic flowing."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import networkx as nx
import pytest

from balancer.table import AliasEntry, Endpoint, HealthSettings, NodeEntry, RoutingTable
from gitops_nodes.diff import Action, FieldChange, NodeChange
from gitops_nodes.health import settings_from
from gitops_nodes.live import LiveInstance, LiveState
from gitops_nodes.plan import Plan, Step, make_plan
from gitops_nodes.render import render_text
from gitops_nodes.spec.hashing import InstanceConfig, spec_hash
from gitops_nodes.spec.state import DesiredNode, DesiredState

PROJECT = "proj"


# --- building desired and live states ------------------------------------------------------


def node_doc(
    name: str,
    *,
    instances: int = 1,
    min_healthy: int = 1,
    env: dict[str, str] | None = None,
    build: str | None = None,
    health: dict[str, Any] | None = None,
) -> dict[str, Any]:
    image: dict[str, Any] = {"build": build} if build else {"name": "busybox"}
    spec: dict[str, Any] = {
        "image": {**image, "port": 8080},
        "instances": instances,
        "minHealthy": min_healthy,
        "env": env or {"VERSION": "1"},
    }
    if health:
        spec["healthCheck"] = health
    return {
        "apiVersion": "gitops-nodes/v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": spec,
    }


def alias_doc(name: str, *routes: tuple[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "gitops-nodes/v1",
        "kind": "Alias",
        "metadata": {"name": name},
        "spec": {"nodes": [{"node": node, "weight": weight} for node, weight in routes]},
    }


def instances_of(
    node: DesiredNode,
    count: int | None = None,
    *,
    config: InstanceConfig | None = None,
    state: str = "running",
    tag: str = "",
) -> tuple[LiveInstance, ...]:
    """Live containers of a node, running its spec (or `config`) at indexes 0..count-1."""
    config = config or node.config
    return tuple(
        LiveInstance(
            name=f"{PROJECT}-{node.name}-{index}{tag}",
            node=node.name,
            index=index,
            spec_hash=spec_hash(config),
            config=config,
            state=state,
            port=30000 + index,
        )
        for index in range(node.instances if count is None else count)
    )


def endpoint(instance: LiveInstance) -> Endpoint:
    return Endpoint(instance.name, "127.0.0.1", instance.port or 0)


def table_for(state: DesiredState, instances: Iterable[LiveInstance]) -> RoutingTable:
    """The table apply would have published for this spec with these instances in rotation."""
    instances = tuple(instances)
    nodes = {
        name: NodeEntry(
            tuple(endpoint(i) for i in instances if i.node == name),
            node.min_healthy,
            settings_from(node.health_check),
        )
        for name, node in state.nodes.items()
    }
    aliases = {name: AliasEntry(alias.routes) for name, alias in state.aliases.items()}
    return RoutingTable(7, MappingProxyType(nodes), MappingProxyType(aliases))


def with_nodes(table: RoutingTable, **entries: NodeEntry) -> RoutingTable:
    return replace(table, nodes=MappingProxyType({**table.nodes, **entries}))


def with_aliases(table: RoutingTable, **entries: AliasEntry) -> RoutingTable:
    return replace(table, aliases=MappingProxyType({**table.aliases, **entries}))


def ids(plan: Plan) -> list[str]:
    return [step.id for step in plan.steps()]


def node_change(plan: Plan, name: str) -> NodeChange:
    return next(c for c in plan.diff.nodes if c.name == name)


def path(plan: Plan, before: str, after: str) -> bool:
    assert before in plan.graph, f"no step {before!r} in {ids(plan)}"
    assert after in plan.graph, f"no step {after!r} in {ids(plan)}"
    return bool(nx.has_path(plan.graph, before, after))


# --- from nothing --------------------------------------------------------------------------


def test_from_nothing_everything_is_created_in_make_before_break_order(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(
        node_doc("web", instances=2),
        node_doc("api"),
        alias_doc("front", ("web", 90), ("api", 10)),
    )

    plan = make_plan(PROJECT, spec, LiveState(PROJECT))

    assert not plan.empty
    assert [(c.name, c.action) for c in plan.diff.nodes] == [
        ("api", Action.CREATE),
        ("web", Action.CREATE),
    ]
    assert [(c.name, c.action) for c in plan.diff.aliases] == [("front", Action.CREATE)]
    assert [(i.index, i.action) for i in node_change(plan, "web").instances] == [
        (0, Action.CREATE),
        (1, Action.CREATE),
    ]
    assert plan.summary() == (3, 0, 0)
    for key in ("web/0", "web/1", "api/0"):
        assert plan.graph.has_edge(f"create {key}", f"wait {key}")
        assert plan.graph.has_edge(f"wait {key}", f"publish {key}")
        assert path(plan, f"publish {key}", "publish alias front")
    assert {s.step for s in plan.steps()} == {Step.CREATE, Step.WAIT, Step.PUBLISH}
    assert len(plan.steps()) == 3 * 3 + 1


def test_new_nodes_instances_are_independent_of_each_other(
    desired: Callable[..., DesiredState],
) -> None:
    plan = make_plan(PROJECT, desired(node_doc("web", instances=3)), LiveState(PROJECT))

    for a in range(3):
        for b in range(3):
            if a != b:
                assert not path(plan, f"publish web/{a}", f"create web/{b}")


# --- no changes ----------------------------------------------------------------------------


def test_matching_live_state_and_table_give_an_empty_plan(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(
        node_doc("web", instances=2, health={"path": "/healthz", "interval": "500ms"}),
        alias_doc("front", ("web", 100)),
    )
    live_instances = instances_of(spec.nodes["web"])
    live = LiveState(PROJECT, live_instances, table=table_for(spec, live_instances))

    plan = make_plan(PROJECT, spec, live)

    assert plan.empty
    assert plan.steps() == []
    assert plan.summary() == (0, 0, 0)
    assert render_text(plan.to_json()).startswith("No changes.")


# --- replacing -----------------------------------------------------------------------------


@pytest.fixture
def env_changed(desired: Callable[..., DesiredState]) -> tuple[Plan, list[str]]:
    """web (3 instances) runs VERSION=1 and the spec now says VERSION=2."""
    spec = desired(
        node_doc("web", instances=3, min_healthy=2, env={"VERSION": "2"}),
        alias_doc("front", ("web", 100)),
    )
    web = spec.nodes["web"]
    old_config = replace(web.config, env=(("VERSION", "1"),))
    old = instances_of(web, config=old_config)
    live = LiveState(PROJECT, old, table=table_for(spec, old))
    return make_plan(PROJECT, spec, live), [i.name for i in old]


def test_changed_env_replaces_the_node(env_changed: tuple[Plan, list[str]]) -> None:
    plan, old = env_changed

    change = node_change(plan, "web")
    assert change.action is Action.REPLACE
    assert FieldChange("env.VERSION", "1", "2", forces_replacement=True) in change.fields
    assert [(i.index, i.action, i.old) for i in change.instances] == [
        (index, Action.REPLACE, name) for index, name in enumerate(old)
    ]
    assert plan.diff.aliases == ()
    assert plan.summary() == (1, 0, 1)


def test_replacement_is_make_before_break_one_instance_at_a_time(
    env_changed: tuple[Plan, list[str]],
) -> None:
    plan, old = env_changed

    for index, name in enumerate(old):
        publish = f"publish web/{index} replacing {name}"
        assert plan.graph.has_edge(f"create web/{index}", f"wait web/{index}")
        assert plan.graph.has_edge(f"wait web/{index}", publish)
        assert path(plan, publish, f"drain {name}")
        assert path(plan, f"drain {name}", f"remove {name}")
        assert not path(plan, f"remove {name}", publish)
        if index + 1 < len(old):
            assert path(plan, f"remove {name}", f"create web/{index + 1}")
            assert not path(plan, f"create web/{index + 1}", f"remove {name}")
    # at most one instance is ever out: no two removes can run side by side
    removes = [f"remove {name}" for name in old]
    assert all(path(plan, a, b) for a, b in itertools.pairwise(removes))


def test_render_shows_the_replacement(env_changed: tuple[Plan, list[str]]) -> None:
    plan, old = env_changed

    text = render_text(plan.to_json())

    assert '-/+ node "web" {' in text
    assert '~ env.VERSION = "1" -> "2" # forces replacement' in text
    assert f"-/+ instance 0 {old[0]} (spec changed)" in text
    assert "-/+ replace" in text  # the legend
    assert text.rstrip("\n").splitlines()[-1] == "Plan: 1 to add, 0 to change, 1 to destroy."


# --- scaling and repairs -------------------------------------------------------------------


def test_scale_up_creates_the_new_indexes_only(desired: Callable[..., DesiredState]) -> None:
    spec = desired(node_doc("web", instances=3))
    have = instances_of(spec.nodes["web"], 2)
    plan = make_plan(PROJECT, spec, LiveState(PROJECT, have, table=table_for(spec, have)))

    change = node_change(plan, "web")
    assert change.action is Action.UPDATE
    assert [(i.index, i.action) for i in change.instances] == [(2, Action.CREATE)]
    assert FieldChange("instances", 2, 3) in change.fields
    assert ids(plan) == ["create web/2", "wait web/2", "publish web/2"]
    assert plan.summary() == (0, 1, 0)


def test_scale_down_unpublishes_drains_and_removes_the_extra(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(node_doc("web", instances=1))
    have = instances_of(spec.nodes["web"], 3)
    plan = make_plan(PROJECT, spec, LiveState(PROJECT, have, table=table_for(spec, have)))

    change = node_change(plan, "web")
    assert change.action is Action.UPDATE
    assert [(i.index, i.action, i.reason) for i in change.instances] == [
        (1, Action.DELETE, "scaled down to 1"),
        (2, Action.DELETE, "scaled down to 1"),
    ]
    assert not any(s.step is Step.CREATE for s in plan.steps())
    for name in (have[1].name, have[2].name):
        assert path(plan, f"publish web without {name}", f"drain {name}")
        assert path(plan, f"drain {name}", f"remove {name}")
    assert plan.summary() == (0, 1, 0)


def test_an_exited_instance_is_replaced(desired: Callable[..., DesiredState]) -> None:
    spec = desired(node_doc("web", instances=2))
    up, down = instances_of(spec.nodes["web"])
    down = replace(down, state="exited")
    live = LiveState(PROJECT, (up, down), table=table_for(spec, (up, down)))

    plan = make_plan(PROJECT, spec, live)

    change = node_change(plan, "web")
    assert change.action is Action.UPDATE
    assert "exited" in change.reason
    assert [(i.index, i.action, i.old) for i in change.instances] == [
        (1, Action.REPLACE, down.name)
    ]
    assert path(plan, f"publish web/1 replacing {down.name}", f"remove {down.name}")
    assert not any(s.instance == up.name for s in plan.steps())


def test_an_unresponsive_instance_is_replaced_make_before_break(
    desired: Callable[..., DesiredState],
) -> None:
    # watch marks a running instance the balancer has counted Unhealthy too long (hung code).
    spec = desired(node_doc("web", instances=2))
    up, hung = instances_of(spec.nodes["web"])
    live = LiveState(PROJECT, (up, hung), table=table_for(spec, (up, hung)))
    assert make_plan(PROJECT, spec, live).empty

    marked = live.with_unresponsive({hung.name, "not-an-instance"})
    assert [i.state for i in marked.instances] == ["running", "unresponsive"]
    assert live.with_unresponsive(()) is live
    plan = make_plan(PROJECT, spec, marked)

    change = node_change(plan, "web")
    assert "instance 1 is unresponsive" in change.reason
    assert [(i.index, i.action, i.old) for i in change.instances] == [
        (1, Action.REPLACE, hung.name)
    ]
    assert path(plan, "wait web/1", f"publish web/1 replacing {hung.name}")
    assert path(plan, f"publish web/1 replacing {hung.name}", f"remove {hung.name}")
    assert not any(s.instance == up.name for s in plan.steps())


def test_only_running_instances_are_marked_unresponsive() -> None:
    exited = LiveInstance("proj-web-0", "web", 0, "h", None, "exited", 1)
    live = LiveState(PROJECT, (exited,))
    assert live.with_unresponsive({exited.name}) is live


def test_an_instance_removed_by_hand_is_created_again(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(node_doc("web", instances=3))
    zero, _, two = instances_of(spec.nodes["web"])
    live = LiveState(PROJECT, (zero, two), table=table_for(spec, (zero, two)))

    plan = make_plan(PROJECT, spec, live)

    change = node_change(plan, "web")
    assert change.action is Action.UPDATE
    assert [(i.index, i.action, i.old) for i in change.instances] == [(1, Action.CREATE, None)]
    assert ids(plan) == ["create web/1", "wait web/1", "publish web/1"]


# --- removing a node an alias stops routing to ---------------------------------------------


def test_an_alias_moves_off_a_node_before_the_node_is_dropped(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(node_doc("web"), alias_doc("front", ("web", 100)))
    web = instances_of(spec.nodes["web"])
    legacy_config = replace(spec.nodes["web"].config, image="busybox:old")
    legacy = tuple(
        replace(i, name=f"{PROJECT}-legacy-{i.index}", node="legacy")
        for i in instances_of(spec.nodes["web"], 2, config=legacy_config)
    )
    table = with_nodes(
        table_for(spec, web),
        legacy=NodeEntry(tuple(map(endpoint, legacy)), 1, HealthSettings()),
    )
    table = with_aliases(table, front=AliasEntry((("web", 50), ("legacy", 50))))

    plan = make_plan(PROJECT, spec, LiveState(PROJECT, web + legacy, table=table))

    assert [(c.name, c.action) for c in plan.diff.nodes] == [("legacy", Action.DELETE)]
    assert [(c.name, c.action) for c in plan.diff.aliases] == [("front", Action.UPDATE)]
    assert path(plan, "publish alias front", "publish node legacy (drop)")
    for instance in legacy:
        assert path(plan, "publish node legacy (drop)", f"drain {instance.name}")
        assert path(plan, "publish alias front", f"remove {instance.name}")
    assert plan.summary() == (0, 1, 1)
    assert ids(plan)[0] == "publish alias front"


def test_a_dropped_alias_is_unpublished_before_its_node(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(node_doc("web"))
    web = instances_of(spec.nodes["web"])
    gone = tuple(replace(i, name="proj-old-0", node="old") for i in web)
    table = with_nodes(
        table_for(spec, web), old=NodeEntry(tuple(map(endpoint, gone)), 1, HealthSettings())
    )
    table = with_aliases(table, retired=AliasEntry((("old", 100),)))

    plan = make_plan(PROJECT, spec, LiveState(PROJECT, web + gone, table=table))

    assert [(c.name, c.action) for c in plan.diff.aliases] == [("retired", Action.DELETE)]
    assert path(plan, "publish alias retired", "publish node old (drop)")
    assert path(plan, "publish alias retired", "remove proj-old-0")
    assert plan.summary() == (0, 0, 2)


# --- settings only -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "published",
    [
        {"min_healthy": 2},
        {"health": HealthSettings(path="/old")},
        {"health": HealthSettings(interval=5.0)},
    ],
    ids=["minHealthy", "healthCheck.path", "healthCheck.interval"],
)
def test_a_settings_change_only_republishes_the_node(
    desired: Callable[..., DesiredState], published: dict[str, Any]
) -> None:
    spec = desired(node_doc("web", instances=2), alias_doc("front", ("web", 100)))
    have = instances_of(spec.nodes["web"])
    table = table_for(spec, have)
    table = with_nodes(table, web=replace(table.nodes["web"], **published))

    plan = make_plan(PROJECT, spec, LiveState(PROJECT, have, table=table))

    change = node_change(plan, "web")
    assert change.action is Action.UPDATE
    assert change.instances == ()
    assert change.publish_settings
    assert all(not f.forces_replacement for f in change.fields)
    assert change.fields  # the field that differs is shown
    assert ids(plan) == ["publish node web"]
    assert plan.summary() == (0, 1, 0)


# --- builds --------------------------------------------------------------------------------

APP = {"app/Dockerfile": "FROM scratch\n"}


def test_a_missing_image_is_built_before_any_instance_is_created(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(node_doc("web", instances=2, build="app"), files=APP)
    build = spec.nodes["web"].build
    assert build is not None

    plan = make_plan(PROJECT, spec, LiveState(PROJECT))

    assert node_change(plan, "web").build == build
    assert ids(plan)[0] == f"build {build.tag}"
    for index in range(2):
        assert path(plan, f"build {build.tag}", f"create web/{index}")
    assert "+ build image" in render_text(plan.to_json())


def test_an_existing_image_is_not_built_again(desired: Callable[..., DesiredState]) -> None:
    spec = desired(node_doc("web", instances=2, build="app"), files=APP)
    build = spec.nodes["web"].build
    assert build is not None

    plan = make_plan(PROJECT, spec, LiveState(PROJECT, images=frozenset({build.tag})))

    assert node_change(plan, "web").build is None
    assert not any(s.step is Step.BUILD for s in plan.steps())
    assert "create web/0" in ids(plan)


def test_nodes_built_from_one_folder_share_one_build_step(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(
        node_doc("v1", build="app"), node_doc("v2", build="app", env={"V": "2"}), files=APP
    )
    tag = spec.nodes["v1"].config.image
    assert spec.nodes["v2"].config.image == tag

    plan = make_plan(PROJECT, spec, LiveState(PROJECT))

    assert [s.id for s in plan.steps() if s.step is Step.BUILD] == [f"build {tag}"]
    assert path(plan, f"build {tag}", "create v1/0")
    assert path(plan, f"build {tag}", "create v2/0")


def test_a_replacement_builds_its_new_image_first(desired: Callable[..., DesiredState]) -> None:
    spec = desired(node_doc("web", build="app"), files=APP)
    web = spec.nodes["web"]
    old = instances_of(web, config=replace(web.config, image="gitops-nodes/build:old"))
    live = LiveState(
        PROJECT, old, images=frozenset({"gitops-nodes/build:old"}), table=table_for(spec, old)
    )

    plan = make_plan(PROJECT, spec, live)

    assert web.build is not None
    assert path(plan, f"build {web.build.tag}", "create web/0")
    assert path(plan, f"build {web.build.tag}", f"remove {old[0].name}")


# --- everything at once: counts, JSON and text ---------------------------------------------


@pytest.fixture
def mixed(desired: Callable[..., DesiredState]) -> tuple[DesiredState, LiveState]:
    """api is new, web's env changed, legacy left the spec, front moves from legacy to api."""
    spec = desired(
        node_doc("web", instances=2, env={"VERSION": "2"}),
        node_doc("api"),
        alias_doc("front", ("web", 50), ("api", 50)),
    )
    web_spec = spec.nodes["web"]
    web = instances_of(web_spec, config=replace(web_spec.config, env=(("VERSION", "1"),)))
    legacy = (replace(web[0], name=f"{PROJECT}-legacy-0", node="legacy"),)
    table = with_nodes(
        table_for(replace(spec, nodes=MappingProxyType({"web": web_spec})), web),
        legacy=NodeEntry((endpoint(legacy[0]),), 1, HealthSettings()),
    )
    table = with_aliases(table, front=AliasEntry((("web", 50), ("legacy", 50))))
    return spec, LiveState(PROJECT, web + legacy, table=table)


def test_summary_counts_a_replacement_as_an_add_and_a_destroy(
    mixed: tuple[DesiredState, LiveState],
) -> None:
    plan = make_plan(PROJECT, *mixed)

    assert [(c.name, c.action) for c in plan.diff.nodes] == [
        ("api", Action.CREATE),
        ("legacy", Action.DELETE),
        ("web", Action.REPLACE),
    ]
    assert [(c.name, c.action) for c in plan.diff.aliases] == [("front", Action.UPDATE)]
    assert plan.summary() == (2, 1, 2)
    assert plan.to_json()["summary"] == {"add": 2, "change": 1, "destroy": 2}
    assert path(plan, "publish api/0", "publish alias front")
    assert path(plan, "publish alias front", "publish node legacy (drop)")


def test_render_text_of_a_mixed_plan(mixed: tuple[DesiredState, LiveState]) -> None:
    text = render_text(make_plan(PROJECT, *mixed).to_json())
    lines = text.rstrip("\n").splitlines()

    assert lines[0] == "gitops-nodes uses these symbols:"
    assert lines[-1] == "Plan: 2 to add, 1 to change, 2 to destroy."
    assert '  + node "api" {' in lines
    assert '  - node "legacy" {' in lines
    assert '-/+ node "web" {' in lines
    assert '  ~ alias "front" {' in lines
    assert "# forces replacement" in text
    assert "~ nodes = " + json.dumps(["web=50", "legacy=50"]) + " -> " in text


def test_plan_json_is_serialisable_and_deterministic(
    mixed: tuple[DesiredState, LiveState],
) -> None:
    spec, live = mixed
    first = make_plan(PROJECT, spec, live).to_json()
    shuffled = replace(live, instances=tuple(reversed(live.instances)))

    again = make_plan(PROJECT, spec, live).to_json()
    from_shuffled = make_plan(PROJECT, spec, shuffled).to_json()

    text = json.dumps(first, sort_keys=False)
    assert json.loads(text) == first
    assert json.dumps(again) == text
    assert json.dumps(from_shuffled) == text
    assert first["format"] == "gitops-nodes/plan/v1"
    assert first["project"] == PROJECT
    builds = [n.build.tag for n in spec.nodes.values() if n.build is not None]
    assert (first["specDigest"], first["liveDigest"]) == (spec.digest(), live.digest(builds))


def test_only_the_images_a_plan_builds_count_in_its_live_digest() -> None:
    # Images are shared by every project on the engine: another project's build must not
    # make this project's saved plan stale, while this plan's own image appearing must.
    live = LiveState(PROJECT)
    mine = "gitops-nodes/build:0123456789abcdef"
    others = replace(live, images=frozenset({"gitops-nodes/build:ffffffffffffffff"}))
    assert others.digest([mine]) == live.digest([mine])
    assert replace(live, images=frozenset({mine})).digest([mine]) != live.digest([mine])


def test_plan_steps_respect_their_dependencies(mixed: tuple[DesiredState, LiveState]) -> None:
    steps = make_plan(PROJECT, *mixed).to_json()["steps"]

    seen: set[str] = set()
    for step in steps:
        assert set(step["after"]) <= seen, f"{step['id']} listed before {step['after']}"
        seen.add(step["id"])
    assert len(seen) == len(steps)


# --- known gaps ----------------------------------------------------------------------------


def test_an_alias_gaining_an_existing_node_waits_for_its_new_instances(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(node_doc("web"), node_doc("api"), alias_doc("front", ("web", 50), ("api", 50)))
    web = instances_of(spec.nodes["web"])
    api = tuple(replace(i, state="exited") for i in instances_of(spec.nodes["api"]))
    table = with_aliases(table_for(spec, web + api), front=AliasEntry((("web", 100),)))

    plan = make_plan(PROJECT, spec, LiveState(PROJECT, web + api, table=table))

    assert node_change(plan, "api").action is Action.UPDATE
    # front starts sending half its traffic to api, whose only instance has exited:
    # it must wait until the replacement is Healthy and published.
    assert path(plan, f"publish api/0 replacing {api[0].name}", "publish alias front")


def test_an_instance_whose_port_moved_is_published_again(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(node_doc("web", instances=2), alias_doc("front", ("web", 100)))
    published = instances_of(spec.nodes["web"])
    # The engine restarted and gave instance 1 another port; nothing else changed.
    now = (published[0], replace(published[1], port=31999))
    plan = make_plan(PROJECT, spec, LiveState(PROJECT, now, table=table_for(spec, published)))

    change = node_change(plan, "web")
    assert change.action is Action.UPDATE
    assert "ports moved" in change.reason
    assert ids(plan) == ["publish node web"]


# --- logs: a budget is fixed at creation ------------------------------------------------------


def test_setting_a_log_budget_replaces_instances_and_no_budget_keeps_them(
    desired: Callable[..., DesiredState],
) -> None:
    doc = node_doc("web", instances=2)
    plain = desired(doc, alias_doc("front", ("web", 100)))
    old = instances_of(plain.nodes["web"])  # made before budgets existed: no `logs`
    live = LiveState(PROJECT, old, table=table_for(plain, old))
    assert make_plan(PROJECT, plain, live).empty  # an upgrade recreates nothing

    doc["spec"]["logs"] = {"maxSize": "1Mi", "maxFiles": 2}
    budgeted = desired(doc, alias_doc("front", ("web", 100)))
    change = node_change(make_plan(PROJECT, budgeted, live), "web")
    assert change.action is Action.REPLACE
    assert FieldChange("logs.maxSize", None, 2**20, forces_replacement=True) in change.fields
    assert FieldChange("logs.maxFiles", None, 2, forces_replacement=True) in change.fields
