"""R-route on the memory runtime: an alias moves onto a node, and an old instance leaves, only
once every running balancer counts the new ones Healthy; a wait that times out fails the
apply and leaves traffic where it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitops_nodes.apply import Outcome
from gitops_nodes.diff import Action
from gitops_nodes.plan import Step, make_plan
from gitops_nodes.runtime.memory import INFINITE_LAG, NEVER_HEALTHY, Crash, Script
from tests.unit.memory_world import PROJECT, World, alias, node, spec


def routes(world: World, name: str) -> tuple[tuple[str, int], ...] | None:
    table = world.live().table
    entry = table.aliases.get(name) if table else None
    return entry.targets if entry else None


def failed_step(world: World) -> str:
    failed = [r for r in world.results if r.outcome is Outcome.FAILED]
    assert len(failed) == 1, world.results
    return failed[0].step.id


def test_a_killed_apply_leaves_instances_that_the_next_apply_adopts_after_a_wait(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.fleet.start()
    desired = spec(tmp_path, node("web", instances=2), alias("front", ("web", 100)))
    world.faults.crash_before_step = "create web/1"  # web/0 started, never waited for
    with pytest.raises(Crash):
        world.apply(desired)
    (left,) = world.runtime.containers

    plan = make_plan(PROJECT, desired, world.live())

    (change,) = plan.diff.nodes
    assert [(i.index, i.action, i.old) for i in change.instances] == [
        (0, Action.ADOPT, left),
        (1, Action.CREATE, None),
    ]
    wait = plan.step_by_id["wait web/0"]
    assert (wait.step, wait.instance) == (Step.WAIT, left)
    assert plan.graph.has_edge("wait web/0", "publish web/0")
    run = world.apply(desired)
    assert run.report is not None and run.report.ok
    assert routes(world, "front") == (("web", 100),)
    table = world.live().table
    assert table is not None
    assert left in {e.instance for e in table.nodes["web"].endpoints}


def test_adopted_instances_that_never_turn_healthy_fail_the_apply_and_the_alias_stays(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.fleet.start()
    world.faults.scripts["web"] = NEVER_HEALTHY
    desired = spec(tmp_path, node("web", start_timeout=15), alias("front", ("web", 100)))
    world.faults.crash_before_step = "wait web/0"
    with pytest.raises(Crash):
        world.apply(desired)

    run = world.apply(desired)

    assert run.report is not None and not run.report.ok
    assert failed_step(world) == "wait web/0"
    assert routes(world, "front") is None
    assert world.runtime.containers == {}  # it never served: removed, as a new one would be
    skipped = run.report.with_outcome(Outcome.NOT_STARTED)
    assert {r.step.id: r.detail for r in skipped} == {
        "publish web/0": "upstream failed: wait web/0",
        "publish alias front": "upstream failed: wait web/0",
    }


def test_weights_moved_onto_a_node_that_turned_sick_fail_and_traffic_stays(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    balancer = world.fleet.start()
    before = spec(
        tmp_path,
        node("a"),
        node("b", start_timeout=5),
        alias("front", ("a", 100), ("b", 0)),
    )
    assert world.apply(before).report is not None
    (sick,) = [i.name for i in world.live().instances if i.node == "b"]
    world.runtime.sicken(sick)

    run = world.apply(
        spec(tmp_path, node("a"), node("b", start_timeout=5), alias("front", ("a", 0), ("b", 100)))
    )

    assert run.report is not None and not run.report.ok
    (failed,) = run.report.with_outcome(Outcome.FAILED)
    assert failed.step.id == "publish alias front"
    assert "alias front stays where it was" in failed.detail
    assert f"balancer {balancer.pid} counts 0 of b's 1 instances in rotation Healthy" in (
        failed.detail
    )
    assert "within 5s" in failed.detail
    assert routes(world, "front") == (("a", 100), ("b", 0))


def test_a_balancer_that_never_reports_fails_a_replacement_and_the_old_instance_serves_on(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.fleet.start()
    assert world.apply(spec(tmp_path, node("web"), alias("front", ("web", 100)))).report
    (old,) = world.runtime.containers
    silent = world.fleet.start(lag=INFINITE_LAG)

    run = world.apply(spec(tmp_path, node("web", version="2"), alias("front", ("web", 100))))

    assert run.report is not None and not run.report.ok
    (failed,) = run.report.with_outcome(Outcome.FAILED)
    assert failed.step.id.startswith("publish web/0 replacing")
    assert f"balancer {silent.pid} serves table generation" in failed.detail
    table = world.live().table
    assert table is not None
    assert [e.instance for e in table.nodes["web"].endpoints] == [old]
    assert world.runtime.containers[old].state == "running"
    skipped = {r.step.id: r.detail for r in run.report.with_outcome(Outcome.NOT_STARTED)}
    assert skipped == {
        f"drain {old}": f"upstream failed: {failed.step.id}",
        f"remove {old}": f"upstream failed: {failed.step.id}",
    }


def test_a_balancer_that_reports_late_within_the_timeout_is_waited_for(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.fleet.start(lag=3.0)

    run = world.apply(spec(tmp_path, node("web", start_timeout=10), alias("front", ("web", 100))))

    assert run.report is not None and run.report.ok
    assert routes(world, "front") == (("web", 100),)


def test_an_instance_kept_from_a_killed_replacement_takes_over_make_before_break(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.fleet.start()
    assert world.apply(spec(tmp_path, node("web"), alias("front", ("web", 100)))).report
    (old,) = world.runtime.containers
    v2 = spec(tmp_path, node("web", version="2"), alias("front", ("web", 100)))
    world.faults.scripts["web"] = Script(ready_after=4)
    world.faults.crash_before_step = "wait web/0"
    with pytest.raises(Crash):
        world.apply(v2)
    (new,) = set(world.runtime.containers) - {old}

    plan = make_plan(PROJECT, v2, world.live())
    publish = f"publish web/0 replacing {old}"
    assert plan.graph.has_edge("wait web/0", publish)
    assert plan.graph.has_edge(publish, f"drain {old}")
    run = world.apply(v2)

    assert run.report is not None and run.report.ok, run.report
    assert set(world.runtime.containers) == {new}
    assert [r.step.id for r in run.report.results] == [r.id for r in plan.steps()]


def test_the_report_is_in_plan_order_and_names_what_stopped_each_skipped_step(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.fleet.start()
    world.faults.scripts["b"] = NEVER_HEALTHY
    desired = spec(
        tmp_path,
        node("a", instances=2),
        node("b", start_timeout=3),
        alias("front", ("a", 50), ("b", 50)),
        alias("solo", ("a", 100)),
    )

    run = world.apply(desired)

    assert run.report is not None and not run.report.ok
    plan = make_plan(PROJECT, desired, world.live().__class__(PROJECT))
    assert [r.step.id for r in run.report.results] == [s.id for s in plan.steps()]
    details = {r.step.id: r.detail for r in run.report.results}
    assert details["publish alias front"] == "upstream failed: wait b/0"
    assert failed_step(world) == "wait b/0"


def test_a_scale_down_never_keeps_only_the_sick_instance_of_a_routed_node(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.fleet.start()
    assert world.apply(spec(tmp_path, node("a", instances=2, min_healthy=0), alias("x", ("a", 1))))
    first, second = sorted(world.runtime.containers, key=lambda n: n.split("-")[2])
    world.runtime.sicken(first)  # index 0 is kept by the scale-down; index 1 serves

    run = world.apply(spec(tmp_path, node("a", min_healthy=0), alias("x", ("a", 1))))

    assert run.report is not None and not run.report.ok
    (failed,) = run.report.with_outcome(Outcome.FAILED)
    assert failed.step.id == f"publish a without {second}"
    assert f"{second} stays in rotation" in failed.detail
    table = world.live().table
    assert table is not None
    assert {e.instance for e in table.nodes["a"].endpoints} == {first, second}


def test_an_alias_leaves_a_node_before_the_node_loses_instances(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.fleet.start()
    assert world.apply(spec(tmp_path, node("a", instances=2), node("b"), alias("x", ("a", 1))))
    (second,) = [n for n in world.runtime.containers if n.startswith(f"{PROJECT}-a-1-")]

    plan = make_plan(
        PROJECT, spec(tmp_path, node("a"), node("b"), alias("x", ("b", 1))), world.live()
    )

    assert plan.graph.has_edge("publish alias x", f"publish a without {second}")


def test_an_alias_giving_a_node_a_larger_share_waits_for_that_nodes_new_instances(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.fleet.start()
    assert world.apply(spec(tmp_path, node("a"), node("b"), alias("y", ("a", 10), ("b", 10))))
    grown = spec(tmp_path, node("b", instances=2, min_healthy=2), alias("y", ("b", 100)))

    plan = make_plan(PROJECT, grown, world.live())
    run = world.apply(grown)

    assert plan.graph.has_edge("publish b/1", "publish alias y")
    assert run.report is not None and run.report.ok, run.report
    assert routes(world, "y") == (("b", 100),)
