"""Endpoint settings, the maintenance limit and suspend/resume, from spec to plan to text.

Pure: desired states are loaded from YAML written to a temporary repo, live states are made
by hand, and plans are read as DAGs (what runs after what) rather than as step lists.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import networkx as nx
import pytest

from balancer.table import (
    DEFAULT_TIMEOUTS,
    NodeEntry,
    RoutingTable,
    TableError,
    Timeouts,
)
from gitops_nodes.diff import Action, FieldChange, NodeChange, Transition
from gitops_nodes.live import LiveInstance, LiveState
from gitops_nodes.plan import Plan, Step, maintenance_batches, make_plan
from gitops_nodes.render import render_text
from gitops_nodes.spec.state import DesiredState
from tests.unit.test_diff_plan import (
    PROJECT,
    alias_doc,
    ids,
    instances_of,
    node_change,
    node_doc,
    path,
    table_for,
)


def doc(name: str, **spec: Any) -> dict[str, Any]:
    """node_doc's node with more spec fields (endpoint, maintenanceLimit, suspended...)."""
    options = {k: spec.pop(k) for k in ("instances", "env", "build") if k in spec}
    document = node_doc(name, **options)
    document["spec"].update(spec)
    return document


def published(state: DesiredState, instances: tuple[LiveInstance, ...]) -> RoutingTable:
    """The table apply publishes: table_for's, with the spec's timeouts and suspension."""
    table = table_for(state, instances)
    nodes = {
        name: replace(
            entry,
            timeouts=state.nodes[name].timeouts,
            suspended=state.nodes[name].suspended,
            endpoints=() if state.nodes[name].suspended else entry.endpoints,
        )
        for name, entry in table.nodes.items()
    }
    return replace(table, nodes=MappingProxyType(nodes))


def plan_for(
    state: DesiredState, have: tuple[LiveInstance, ...], table: RoutingTable | None = None
) -> Plan:
    return make_plan(PROJECT, state, LiveState(PROJECT, have, table=table))


# --- the spec ------------------------------------------------------------------------------


def test_defaults_are_the_references(desired: Callable[..., DesiredState]) -> None:
    web = desired(doc("web")).nodes["web"]

    assert web.timeouts == Timeouts(request=15.0, idle=15.0) == DEFAULT_TIMEOUTS
    assert web.maintenance_limit == 1
    assert web.suspended is False


def test_the_new_fields_are_read(desired: Callable[..., DesiredState]) -> None:
    web = desired(
        doc(
            "web",
            instances=3,
            endpoint={"timeout": "1m30s", "idleTimeout": "500ms"},
            maintenanceLimit=3,
            suspended=True,
        )
    ).nodes["web"]

    assert web.timeouts == Timeouts(request=90.0, idle=0.5)
    assert (web.maintenance_limit, web.suspended) == (3, True)


def test_the_spec_digest_sees_every_new_field(desired: Callable[..., DesiredState]) -> None:
    base = desired(doc("web", instances=2)).digest()
    for extra in (
        {"endpoint": {"timeout": "20s"}},
        {"endpoint": {"idleTimeout": "20s"}},
        {"maintenanceLimit": 2},
        {"suspended": True},
    ):
        assert desired(doc("web", instances=2, **extra)).digest() != base, extra


# --- the routing table ---------------------------------------------------------------------


def test_the_table_carries_timeouts_and_suspension_through_its_file() -> None:
    nodes = {
        "web": NodeEntry((), 1, table_for_health(), Timeouts(3.0, 0.5), suspended=True),
        "api": NodeEntry((), 1, table_for_health()),
    }
    table = RoutingTable(4, MappingProxyType(nodes))

    data = json.loads(json.dumps(table.to_json()))
    assert data["nodes"]["web"]["timeouts"] == {"request": 3.0, "idle": 0.5}
    assert data["nodes"]["web"]["suspended"] is True
    assert RoutingTable.from_json(data) == table


def test_a_table_from_before_the_timeouts_reads_with_the_defaults() -> None:
    data = RoutingTable(1, MappingProxyType({"web": NodeEntry((), 1, table_for_health())}))
    text = data.to_json()
    for entry in text["nodes"].values():
        del entry["timeouts"], entry["suspended"]

    entry = RoutingTable.from_json(text).nodes["web"]

    assert (entry.timeouts, entry.suspended) == (DEFAULT_TIMEOUTS, False)


@pytest.mark.parametrize("bad", [{"request": 0}, {"idle": -1}, {"request": "soon"}])
def test_a_table_with_bad_timeouts_is_refused(bad: dict[str, Any]) -> None:
    text = RoutingTable(1, MappingProxyType({"web": NodeEntry((), 1, table_for_health())}))
    data = text.to_json()
    data["nodes"]["web"]["timeouts"] = bad

    with pytest.raises(TableError, match="malformed routing table"):
        RoutingTable.from_json(data)


def table_for_health() -> Any:
    from balancer.table import HealthSettings

    return HealthSettings(path="/healthz")


# --- endpoint settings: an in-place update ------------------------------------------------


def test_changed_timeouts_republish_the_node_without_new_containers(
    desired: Callable[..., DesiredState],
) -> None:
    before = desired(doc("web", instances=2))
    have = instances_of(before.nodes["web"])
    after = desired(doc("web", instances=2, endpoint={"timeout": "30s", "idleTimeout": "1m"}))

    plan = plan_for(after, have, published(before, have))

    change = node_change(plan, "web")
    assert change.action is Action.UPDATE
    assert change.instances == ()
    assert FieldChange("endpoint.timeout", 15.0, 30.0) in change.fields
    assert FieldChange("endpoint.idleTimeout", 15.0, 60.0) in change.fields
    assert ids(plan) == ["publish node web"]
    text = render_text(plan.to_json())
    assert "~ endpoint.timeout     = 15.0 -> 30.0\n" in text
    assert "forces replacement" not in text
    assert text.rstrip().endswith("Plan: 0 to add, 1 to change, 0 to destroy.")


def test_published_timeouts_matching_the_spec_give_no_changes(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(doc("web", instances=2, endpoint={"timeout": "30s"}))
    have = instances_of(spec.nodes["web"])

    assert plan_for(spec, have, published(spec, have)).empty


# --- the maintenance limit -----------------------------------------------------------------


def replacing(
    desired: Callable[..., DesiredState], instances: int, limit: int
) -> tuple[Plan, list[str]]:
    """web runs VERSION=1 on every instance and the spec now says VERSION=2."""
    spec = desired(doc("web", instances=instances, maintenanceLimit=limit, env={"VERSION": "2"}))
    web = spec.nodes["web"]
    old = instances_of(web, config=replace(web.config, env=(("VERSION", "1"),)))
    return plan_for(spec, old, published(spec, old)), [i.name for i in old]


@pytest.mark.parametrize(("instances", "limit"), [(3, 1), (3, 2), (3, 3), (5, 2), (4, 2)])
def test_replacement_goes_in_batches_of_at_most_the_limit(
    desired: Callable[..., DesiredState], instances: int, limit: int
) -> None:
    plan, old = replacing(desired, instances, limit)

    batches = [[i.index for i in batch] for batch in maintenance_batches(node_change(plan, "web"))]
    assert len(batches) == math.ceil(instances / limit)
    assert [i for batch in batches for i in batch] == list(range(instances))
    assert all(1 <= len(batch) <= limit for batch in batches)
    batch_of = {i: number for number, batch in enumerate(batches) for i in batch}
    for a, b in itertools.permutations(range(instances), 2):
        if batch_of[a] < batch_of[b]:
            # the next batch starts only once the one before is wholly done
            assert path(plan, f"remove {old[a]}", f"create web/{b}")
        elif batch_of[a] == batch_of[b]:
            # within a batch, instances are replaced side by side
            assert not path(plan, f"create web/{a}", f"remove {old[b]}")
    for index, name in enumerate(old):  # make before break, instance by instance
        publish = f"publish web/{index} replacing {name}"
        assert path(plan, f"wait web/{index}", publish)
        assert path(plan, publish, f"drain {name}")
        assert path(plan, f"drain {name}", f"remove {name}")


def test_never_more_than_the_limit_are_out_at_once(desired: Callable[..., DesiredState]) -> None:
    """Read off the DAG: any limit + 1 replacements include two that cannot overlap."""
    plan, old = replacing(desired, 5, 2)

    def overlap(a: int, b: int) -> bool:
        return not path(plan, f"remove {old[a]}", f"create web/{b}") and not path(
            plan, f"remove {old[b]}", f"create web/{a}"
        )

    for group in itertools.combinations(range(5), 3):
        assert not all(overlap(a, b) for a, b in itertools.combinations(group, 2)), group
    assert any(overlap(a, b) for a, b in itertools.combinations(range(5), 2))


def test_the_plan_shows_its_batches(desired: Callable[..., DesiredState]) -> None:
    plan, old = replacing(desired, 3, 2)

    data = plan.to_json()
    change = data["changes"][0]
    assert change["maintenance"] == {"limit": 2, "batches": [[0, 1], [2]]}
    assert [i["batch"] for i in change["instances"]] == [1, 1, 2]
    steps = {s["id"]: s for s in data["steps"]}
    assert steps["create web/0"]["batch"] == 1
    assert steps["create web/2"]["batch"] == 2
    assert steps[f"remove {old[2]}"]["batch"] == 2
    text = render_text(data)
    assert f"-/+ instance 0 {old[0]} (spec changed) [batch 1 of 2]" in text
    assert f"-/+ instance 2 {old[2]} (spec changed) [batch 2 of 2]" in text
    assert "# maintenanceLimit 2: replaced 2 at a time, in 2 batches" in text


def test_the_default_limit_keeps_one_at_a_time(desired: Callable[..., DesiredState]) -> None:
    plan, old = replacing(desired, 3, 1)

    removes = [f"remove {name}" for name in old]
    assert all(path(plan, a, b) for a, b in itertools.pairwise(removes))
    assert plan.to_json()["changes"][0]["maintenance"]["batches"] == [[0], [1], [2]]


def test_instances_that_do_not_serve_are_replaced_at_once(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(doc("web", instances=3, env={"VERSION": "2"}))
    web = spec.nodes["web"]
    old = instances_of(web, config=replace(web.config, env=(("VERSION", "1"),)))
    old = (*old[:2], replace(old[2], state="exited"))

    plan = plan_for(spec, old, published(spec, old[:2]))

    change = node_change(plan, "web")
    assert [(i.index, i.in_service) for i in change.instances] == [
        (0, True),
        (1, True),
        (2, False),
    ]
    assert [[i.index for i in b] for b in maintenance_batches(change)] == [[0], [1]]
    # the exited one waits for no batch, and no batch waits for it
    for instance in old[:2]:
        assert not path(plan, f"remove {instance.name}", "create web/2")
        assert not path(plan, f"remove {old[2].name}", "create web/0")
    assert "batch" not in plan.to_json()["changes"][0]["instances"][2]


def test_a_changed_limit_alone_changes_nothing_live(
    desired: Callable[..., DesiredState],
) -> None:
    before = desired(doc("web", instances=3))
    have = instances_of(before.nodes["web"])
    after = desired(doc("web", instances=3, maintenanceLimit=3))

    plan = plan_for(after, have, published(before, have))

    # It only shapes a replacement: nothing to do, but a saved plan made with the other
    # limit is stale (the spec digest differs).
    assert plan.empty
    assert plan.spec_digest != plan_for(before, have, published(before, have)).spec_digest


# --- suspend -------------------------------------------------------------------------------


@pytest.fixture
def running(desired: Callable[..., DesiredState]) -> tuple[DesiredState, tuple[LiveInstance, ...]]:
    """web has two running instances behind alias front, published as the spec says."""
    spec = desired(doc("web", instances=2), alias_doc("front", ("web", 100)))
    return spec, instances_of(spec.nodes["web"])


def suspended_spec(
    desired: Callable[..., DesiredState], instances: int = 2, **extra: Any
) -> DesiredState:
    return desired(
        doc("web", instances=instances, suspended=True, **extra),
        alias_doc("front", ("web", 100)),
    )


def test_suspending_stops_the_instances_after_unpublishing_them(
    desired: Callable[..., DesiredState],
    running: tuple[DesiredState, tuple[LiveInstance, ...]],
) -> None:
    spec, have = running

    plan = plan_for(suspended_spec(desired), have, published(spec, have))

    change = node_change(plan, "web")
    assert (change.action, change.transition) == (Action.UPDATE, Transition.SUSPEND)
    assert [(i.index, i.action, i.old) for i in change.instances] == [
        (0, Action.SUSPEND, have[0].name),
        (1, Action.SUSPEND, have[1].name),
    ]
    assert FieldChange("suspended", False, True) in change.fields
    assert plan.diff.aliases == ()  # the alias keeps its entry and routes around the node
    assert {s.step for s in plan.steps()} == {Step.PUBLISH, Step.STOP}
    for instance in have:
        assert path(plan, "publish node web (suspended)", f"stop {instance.name}")
    assert not path(plan, f"stop {have[0].name}", f"stop {have[1].name}")
    assert plan.summary() == (0, 1, 0)


def test_suspend_reads_clearly(
    desired: Callable[..., DesiredState],
    running: tuple[DesiredState, tuple[LiveInstance, ...]],
) -> None:
    spec, have = running

    text = render_text(plan_for(suspended_spec(desired), have, published(spec, have)).to_json())

    assert "  ~ suspend (instances stopped and kept; definition, image and aliases kept)" in text
    assert "  # Node web will be suspended (suspended: its instances stop;" in text
    assert "      ~ suspended = false -> true" in text
    assert f"      ~ suspend instance 0 {have[0].name} (its node is suspended)" in text
    assert "will be destroyed" not in text


def suspended_live(
    spec: DesiredState, state: str = "exited"
) -> tuple[tuple[LiveInstance, ...], RoutingTable]:
    """The live state right after suspending: stopped containers, the node published empty."""
    have = tuple(replace(i, state=state, port=None) for i in instances_of(spec.nodes["web"]))
    return have, published(spec, have)


def test_a_suspended_node_plans_nothing(desired: Callable[..., DesiredState]) -> None:
    spec = suspended_spec(desired)
    have, table = suspended_live(spec)

    assert table.nodes["web"].endpoints == ()
    plan = plan_for(spec, have, table)

    assert plan.empty, render_text(plan.to_json())


def test_a_suspended_instance_started_by_hand_is_stopped_again(
    desired: Callable[..., DesiredState],
) -> None:
    spec = suspended_spec(desired)
    have, table = suspended_live(spec)
    have = (replace(have[0], state="running", port=31000), have[1])

    plan = plan_for(spec, have, table)

    change = node_change(plan, "web")
    assert change.transition is Transition.SUSPEND
    assert [(i.action, i.old) for i in change.instances] == [(Action.SUSPEND, have[0].name)]
    assert ids(plan) == ["publish node web (suspended)", f"stop {have[0].name}"]
    assert not any(s.step in (Step.CREATE, Step.START) for s in plan.steps())


def test_a_suspended_node_drops_what_it_would_not_resume(
    desired: Callable[..., DesiredState],
) -> None:
    spec = suspended_spec(desired)
    have, table = suspended_live(spec)
    # its spec changed while suspended and it is scaled down to 1
    changed = suspended_spec(desired, instances=1, env={"VERSION": "2"})

    plan = plan_for(changed, have, replace(table))

    change = node_change(plan, "web")
    assert change.transition is None  # it stays suspended
    assert [(i.index, i.action) for i in change.instances] == [
        (0, Action.DELETE),
        (1, Action.DELETE),
    ]
    assert "spec changed while suspended" in change.instances[0].reason
    assert not any(s.step in (Step.CREATE, Step.START, Step.BUILD) for s in plan.steps())
    for instance in have:
        assert path(plan, "publish node web (suspended)", f"remove {instance.name}")


def test_a_new_suspended_node_is_published_without_instances(
    desired: Callable[..., DesiredState],
) -> None:
    plan = plan_for(suspended_spec(desired), ())

    change = node_change(plan, "web")
    assert (change.action, change.instances, change.build) == (Action.CREATE, (), None)
    assert ids(plan) == ["publish node web", "publish alias front"]
    assert "+ suspended" in render_text(plan.to_json())
    # and once published so, with no container at all, it has nothing more to do
    spec = suspended_spec(desired)
    assert plan_for(spec, (), published(spec, ())).empty


# --- resume --------------------------------------------------------------------------------


def test_resuming_starts_the_stopped_instances_at_once(
    desired: Callable[..., DesiredState],
) -> None:
    spec = suspended_spec(desired)
    have, table = suspended_live(spec)
    resumed = desired(doc("web", instances=2), alias_doc("front", ("web", 100)))

    plan = plan_for(resumed, have, table)

    change = node_change(plan, "web")
    assert (change.action, change.transition) == (Action.UPDATE, Transition.RESUME)
    assert [(i.index, i.action, i.old) for i in change.instances] == [
        (0, Action.RESUME, have[0].name),
        (1, Action.RESUME, have[1].name),
    ]
    assert change.build is None
    assert {s.step for s in plan.steps()} == {Step.START, Step.WAIT, Step.PUBLISH}
    for index in range(2):
        assert path(plan, f"start web/{index}", f"wait web/{index}")
        assert path(plan, f"wait web/{index}", f"publish web/{index}")
    assert not path(plan, "start web/0", "start web/1")
    assert not path(plan, "publish web/0", "start web/1")
    starts = [s for s in plan.steps() if s.step is Step.START]
    assert [s.instance for s in starts] == [i.name for i in have]
    text = render_text(plan.to_json())
    assert "  # Node web will be resumed (resumed: its stopped instances start again)" in text
    assert f"      ~ resume instance 0 {have[0].name} (instance 0 starts again)" in text
    assert "  ~ resume (the stopped instances start again)" in text


def test_resuming_creates_what_was_never_there(desired: Callable[..., DesiredState]) -> None:
    spec = suspended_spec(desired)
    have, table = suspended_live(spec)
    resumed = desired(doc("web", instances=3))

    plan = plan_for(resumed, have, table)

    change = node_change(plan, "web")
    assert [(i.index, i.action) for i in change.instances] == [
        (0, Action.RESUME),
        (1, Action.RESUME),
        (2, Action.CREATE),
    ]
    assert "create web/2" in ids(plan) and "start web/0" in ids(plan)


def test_an_exited_instance_is_replaced_unless_its_node_resumes(
    desired: Callable[..., DesiredState],
) -> None:
    spec = desired(doc("web", instances=2))
    have = instances_of(spec.nodes["web"])
    table = published(spec, have)  # not suspended
    have = (have[0], replace(have[1], state="exited", port=None))

    change = node_change(plan_for(spec, have, table), "web")

    assert [(i.action, i.in_service) for i in change.instances] == [(Action.REPLACE, False)]
    assert change.transition is None


def node_changes(plan: Plan) -> dict[str, NodeChange]:
    return {c.name: c for c in plan.diff.nodes}


def test_suspend_and_resume_are_steps_apply_knows(
    desired: Callable[..., DesiredState],
    running: tuple[DesiredState, tuple[LiveInstance, ...]],
) -> None:
    spec, have = running
    suspend = plan_for(suspended_spec(desired), have, published(spec, have))
    stopped, table = suspended_live(suspended_spec(desired))
    resume = plan_for(spec, stopped, table)

    for plan in (suspend, resume):
        assert nx.is_directed_acyclic_graph(plan.graph)
        data = plan.to_json()
        seen: set[str] = set()
        for step in data["steps"]:
            assert set(step["after"]) <= seen
            seen.add(step["id"])
    assert node_changes(suspend)["web"].transition is Transition.SUSPEND
    assert node_changes(resume)["web"].transition is Transition.RESUME
    assert suspend.to_json()["changes"][0]["transition"] == "suspend"
    assert resume.to_json()["changes"][0]["transition"] == "resume"
