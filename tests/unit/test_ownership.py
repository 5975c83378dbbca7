"""R-own without Docker: a state directory's owner id, which containers it counts as its own,
and plans that never touch (nor prefer) a container without our owner id."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.table import Endpoint, HealthSettings, NodeEntry, RoutingTable, write_table
from gitops_nodes import workflow
from gitops_nodes.diff import Action
from gitops_nodes.errors import GitopsNodesError
from gitops_nodes.live import UNLABELLED, LiveInstance, LiveState, Ownership
from gitops_nodes.plan import Step, make_plan
from gitops_nodes.render import render_text
from gitops_nodes.runtime import labels
from gitops_nodes.runtime.base import Runtime
from gitops_nodes.runtime.swarm_spec import node_service_spec, task_instances
from gitops_nodes.spec.state import DesiredNode, DesiredState
from gitops_nodes.statedir import StateDir, ensure_ownership, read_ownership

PROJECT = "proj"
OURS = "a" * 32
THEIRS = "b" * 32


def node_doc(name: str, instances: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "gitops-nodes/v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"image": {"name": "busybox", "port": 8080}, "instances": instances},
    }


def instance(
    node: DesiredNode,
    index: int,
    name: str,
    owner: str = OURS,
    port: int | None = 30000,
    spec_hash: str | None = None,
) -> LiveInstance:
    return LiveInstance(
        name=name,
        node=node.name,
        index=index,
        spec_hash=node.spec_hash if spec_hash is None else spec_hash,
        config=node.config,
        state="running",
        port=port,
        owner=owner,
    )


def table_serving(node: DesiredNode, *served: LiveInstance) -> RoutingTable:
    endpoints = tuple(Endpoint(i.name, "127.0.0.1", i.port or 0) for i in served)
    return RoutingTable(1, {node.name: NodeEntry(endpoints, node.min_healthy, node.health)}, {})


class ListedRuntime:
    """Just enough of a Runtime for observe: a fixed listing of the project's containers."""

    name = "listed"

    def __init__(self, instances: list[LiveInstance], served: RoutingTable | None = None) -> None:
        self.instances = instances
        self.served = served
        self.asked = 0

    def list_instances(self, project: str) -> list[LiveInstance]:
        return list(self.instances)

    def list_images(self, project: str) -> set[str]:
        return set()

    def served_table(self, project: str, state: StateDir) -> RoutingTable | None:
        self.asked += 1
        return self.served


def listed(instances: list[LiveInstance]) -> Runtime:
    return cast(Runtime, ListedRuntime(instances))


# --- the owner id in the state directory ----------------------------------------------------


def test_a_new_state_directory_claims_nothing_until_its_first_apply_gives_it_an_id(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path / PROJECT)
    assert read_ownership(state) == Ownership("", frozenset())
    recorded = ensure_ownership(state, read_ownership(state))
    assert len(recorded.owner) == 32 and recorded.adopted == frozenset()
    assert read_ownership(state) == recorded
    assert ensure_ownership(state, read_ownership(state)) == recorded  # generated once


def test_a_state_directory_used_before_owner_labels_claims_the_unlabelled_containers(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path / PROJECT)
    state.path.mkdir(parents=True)
    write_table(state.table, RoutingTable())
    assert read_ownership(state).adopted == frozenset({UNLABELLED})


def test_an_unreadable_owner_record_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    state = StateDir(tmp_path / PROJECT)
    state.path.mkdir(parents=True)
    state.owner_file.write_text(json.dumps(["not", "a", "record"]))
    with pytest.raises(GitopsNodesError, match="--adopt"):
        read_ownership(state)


def test_ownership_owns_its_id_and_adopted_owners_only() -> None:
    ownership = Ownership(OURS, frozenset({THEIRS}))

    def labelled(owner: str) -> LiveInstance:
        return LiveInstance("c", "n", 0, "h", None, "running", 1, owner=owner)

    assert ownership.owns(labelled(OURS)) and ownership.owns(labelled(THEIRS))
    assert not ownership.owns(labelled(UNLABELLED))
    assert not ownership.owns(labelled("c" * 32))
    assert not Ownership("", frozenset()).owns(labelled(UNLABELLED))  # "" is no owner id


# --- observe: ours, and the others set aside ---------------------------------------------------


def test_observe_sets_aside_the_containers_of_another_owner_and_adopt_takes_them(
    tmp_path: Path, desired: Callable[..., DesiredState]
) -> None:
    spec = desired(node_doc("api", instances=2))
    api = spec.nodes["api"]
    state = StateDir(tmp_path / PROJECT)
    ownership = ensure_ownership(state, read_ownership(state))
    mine = instance(api, 0, "proj-api-0-mine", owner=ownership.owner)
    theirs = instance(api, 1, "proj-api-1-theirs", owner=THEIRS)
    runtime = listed([mine, theirs])

    live = workflow.observe(runtime, PROJECT, state)
    assert live.instances == (mine,) and live.foreign == (theirs,)

    adopted = workflow.claim(state, workflow.observe(runtime, PROJECT, state, adopt=True))
    assert set(adopted.instances) == {mine, theirs} and adopted.foreign == ()
    assert read_ownership(state).adopted == frozenset({THEIRS})  # recorded for next time


def test_without_a_table_of_its_own_observe_starts_from_the_one_the_balancers_serve(
    tmp_path: Path,
) -> None:
    """A state directory lost (a fresh CI runner): its first plan starts from the table that
    serves, not from none, so it does not publish a table without the aliases serving now;
    a state directory's own table is its record, and the balancers are not asked."""
    served = RoutingTable(generation=7)
    runtime = ListedRuntime([], served=served)
    state = StateDir(tmp_path / PROJECT)

    assert workflow.observe(cast(Runtime, runtime), PROJECT, state).table is served
    assert not state.path.exists()  # observing wrote nothing
    state.path.mkdir(parents=True)
    write_table(state.table, RoutingTable(generation=3))
    asked = runtime.asked
    own = workflow.observe(cast(Runtime, runtime), PROJECT, state).table
    assert own is not None and own.generation == 3 and runtime.asked == asked


def test_the_claim_on_unlabelled_containers_ends_when_none_is_left(
    tmp_path: Path, desired: Callable[..., DesiredState]
) -> None:
    api = desired(node_doc("api")).nodes["api"]
    state = StateDir(tmp_path / PROJECT)
    state.path.mkdir(parents=True)
    write_table(state.table, RoutingTable())
    legacy = instance(api, 0, "proj-api-0-old", owner=UNLABELLED)

    live = workflow.claim(state, workflow.observe(listed([legacy]), PROJECT, state))
    assert live.instances == (legacy,)  # an upgrade does not orphan a project
    assert UNLABELLED in read_ownership(state).adopted

    replaced = instance(api, 0, "proj-api-0-new", owner=live.ownership.owner)
    workflow.claim(state, workflow.observe(listed([replaced]), PROJECT, state))
    assert read_ownership(state).adopted == frozenset()
    copied = instance(api, 0, "proj-api-0-copy", owner=UNLABELLED)
    assert workflow.observe(listed([replaced, copied]), PROJECT, state).foreign == (copied,)


# --- plans: never touch the others, never prefer an impostor -----------------------------------


def test_a_second_state_directory_plans_no_destruction_of_the_first_ones_nodes(
    desired: Callable[..., DesiredState],
) -> None:
    first = desired(node_doc("api"), node_doc("old"))
    theirs = (
        instance(first.nodes["api"], 0, "proj-api-0-x", owner=THEIRS),
        instance(first.nodes["old"], 0, "proj-old-0-x", owner=THEIRS),
    )
    second = desired(node_doc("api"))  # a checkout that no longer has "old"
    live = LiveState(PROJECT, foreign=theirs, ownership=Ownership(OURS))
    plan = make_plan(PROJECT, second, live)
    assert all(change.action is not Action.DELETE for change in plan.diff.nodes)
    touched = {step.instance for step in plan.steps() if step.instance}
    assert touched.isdisjoint({i.name for i in theirs})
    text = render_text(plan.to_json())
    assert "proj-old-0-x" in text and "owned by another state directory; --adopt" in text


def test_an_impostor_with_copied_labels_is_never_preferred_to_the_served_instance(
    desired: Callable[..., DesiredState],
) -> None:
    api = desired(node_doc("api")).nodes["api"]
    real = instance(api, 0, "proj-api-0-zzz")
    impostor = instance(api, 0, "proj-api-0-aaa", port=None)  # sorts first, no port
    spec = desired(node_doc("api"))
    live = LiveState(PROJECT, (real, impostor), table=table_serving(api, real))
    plan = make_plan(PROJECT, spec, live)
    [change] = plan.diff.nodes
    [removal] = change.instances
    assert (removal.action, removal.old) == (Action.DELETE, impostor.name)
    assert "which the routing table serves" in removal.reason
    assert not any(s.instance == real.name for s in plan.steps())


def test_the_served_instance_is_the_one_replaced_and_a_copy_goes(
    desired: Callable[..., DesiredState],
) -> None:
    api = desired(node_doc("api")).nodes["api"]
    real = instance(api, 0, "proj-api-0-zzz", spec_hash="old")
    impostor = instance(api, 0, "proj-api-0-aaa", port=None, spec_hash="old")
    live = LiveState(PROJECT, (real, impostor), table=table_serving(api, real))
    [change] = make_plan(PROJECT, desired(node_doc("api")), live).diff.nodes
    by_action = {i.action: i.old for i in change.instances}
    assert by_action == {Action.REPLACE: real.name, Action.DELETE: impostor.name}


owners = st.sampled_from([OURS, THEIRS, UNLABELLED, "c" * 32])


# spec_for only caches loaded specs: sharing it between examples is what it is for.
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    slots=st.lists(
        st.tuples(
            st.sampled_from(["api", "web"]),
            st.integers(0, 2),
            owners,
            st.booleans(),  # has a port
            st.booleans(),  # runs the current spec
            st.booleans(),  # served by the table
        ),
        max_size=8,
    ),
    wanted=st.sets(st.sampled_from(["api", "web"])),
    adopted=st.sets(owners),
)
def test_no_plan_touches_a_container_whose_owner_is_not_claimed(
    slots: list[tuple[str, int, str, bool, bool, bool]],
    wanted: set[str],
    adopted: set[str],
    spec_for: Callable[[frozenset[str]], DesiredState],
) -> None:
    spec = spec_for(frozenset(wanted))
    nodes = spec_for(frozenset({"api", "web"})).nodes
    ownership = Ownership(OURS, frozenset(adopted))
    everything = [
        instance(
            nodes[node],
            index,
            f"proj-{node}-{index}-{position}",
            owner=owner,
            port=30000 + position if has_port else None,
            spec_hash=None if current else "old",
        )
        for position, (node, index, owner, has_port, current, _) in enumerate(slots)
    ]
    served = [i for i, slot in zip(everything, slots, strict=True) if slot[5] and i.port]
    entries = {
        name: NodeEntry(
            tuple(Endpoint(i.name, "127.0.0.1", i.port or 0) for i in served if i.node == name),
            1,
            HealthSettings(),
        )
        for name in {i.node for i in served}
    }
    live = LiveState(
        PROJECT,
        tuple(i for i in everything if ownership.owns(i)),
        table=RoutingTable(1, entries, {}),
        foreign=tuple(i for i in everything if not ownership.owns(i)),
        ownership=ownership,
    )
    plan = make_plan(PROJECT, spec, live)
    foreign = {i.name for i in live.foreign}
    touched = {s.instance for s in plan.steps() if s.instance and s.step is not Step.PUBLISH}
    touched |= {c.old for n in plan.diff.nodes for c in n.instances if c.old}
    assert touched.isdisjoint(foreign)
    # Where the table serves an instance of the current spec at an index, one of those is kept:
    # an unserved copy of it is never preferred.
    removed = {c.old for n in plan.diff.nodes for c in n.instances if c.old}
    for node, want in spec.nodes.items():
        for index in range(want.instances):
            real = [
                i.name
                for i in live.instances
                if i in served and (i.node, i.index) == (node, index) and i.spec_hash != "old"
            ]
            assert not real or not set(real) <= removed


@pytest.fixture
def spec_for(desired: Callable[..., DesiredState]) -> Callable[[frozenset[str]], DesiredState]:
    """The spec with the chosen nodes (each with 2 instances), loaded once per choice."""
    cache: dict[frozenset[str], DesiredState] = {}

    def make(names: frozenset[str]) -> DesiredState:
        if names not in cache:
            cache[names] = desired(*(node_doc(n, instances=2) for n in sorted(names)))
        return cache[names]

    return make


# --- the swarm: the owner labels the service, never its tasks ----------------------------------


def test_a_swarm_service_carries_the_owner_id_its_tasks_do_not(
    desired: Callable[..., DesiredState],
) -> None:
    api = desired(node_doc("api")).nodes["api"]
    spec = node_service_spec(PROJECT, api, "busybox", "net", owner=OURS)
    assert spec["Labels"][labels.OWNER] == OURS
    assert labels.OWNER not in spec["TaskTemplate"]["ContainerSpec"]["Labels"]
    task = {
        "ID": "t1",
        "Slot": 1,
        "DesiredState": "running",
        "Status": {"State": "running"},
        "Spec": {"ContainerSpec": {"Labels": spec["TaskTemplate"]["ContainerSpec"]["Labels"]}},
    }
    [found] = task_instances(spec["Name"], [task], "net", owner=OURS)
    assert found.owner == OURS


def test_a_running_copy_of_a_suspended_instance_is_stopped_never_kept_over_it(
    desired: Callable[..., DesiredState],
) -> None:
    doc = node_doc("api")
    doc["spec"]["suspended"] = True
    spec = desired(doc)
    api = spec.nodes["api"]
    real = replace(instance(api, 0, "proj-api-0-zzz", port=None), state="exited", started_at=1.0)
    copy = replace(instance(api, 0, "proj-api-0-aaa", port=None), started_at=2.0)
    entry = NodeEntry((), api.min_healthy, api.health, suspended=True)
    live = LiveState(PROJECT, (real, copy), table=RoutingTable(1, {"api": entry}, {}))
    [change] = make_plan(PROJECT, spec, live).diff.nodes
    assert [(i.action, i.old) for i in change.instances] == [(Action.DELETE, copy.name)]
