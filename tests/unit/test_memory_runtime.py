"""The memory runtime itself: it is a Runtime, its faults fire as scripted, and apply runs on it
(without Docker, in virtual time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitops_nodes.apply import Outcome
from gitops_nodes.errors import RuntimeFailure
from gitops_nodes.live import UNOWNED
from gitops_nodes.runtime.base import Runtime
from gitops_nodes.runtime.memory import NEVER_HEALTHY, Crash, MemoryRuntime, Script
from tests.unit.memory_world import PROJECT, World, alias, node, spec


def test_the_memory_runtime_is_a_runtime() -> None:
    runtime: Runtime = MemoryRuntime()  # mypy checks the Protocol here

    assert runtime.name == "memory"
    assert runtime.list_instances(PROJECT) == []


def test_an_instance_follows_its_script_in_virtual_time() -> None:
    runtime = MemoryRuntime()
    created = runtime.seed(PROJECT, node("web"), 0, script=Script(ready_after=2, sick_after=5))

    seen = []
    for _ in range(7):
        seen.append(runtime.is_healthy(created.name))
        runtime.clock.advance(1)

    assert seen == [False, False, True, True, True, False, False]


def test_scripted_engine_failures_and_crashes_fire_once(tmp_path: Path) -> None:
    runtime = MemoryRuntime()
    runtime.fail_next("create")
    with pytest.raises(RuntimeFailure, match="scripted"):
        runtime.create_instance(PROJECT, node("web"), 0, UNOWNED)
    assert runtime.create_instance(PROJECT, node("web"), 0, UNOWNED).state == "running"

    runtime.faults.crash_at_call = len(runtime.calls) + 1
    with pytest.raises(Crash):
        runtime.remove_instance(PROJECT, "anything")
    runtime.remove_instance(PROJECT, "anything")  # fired once


def test_apply_on_memory_creates_publishes_and_converges(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.fleet.start()
    desired = spec(tmp_path, node("web", instances=2), alias("front", ("web", 100)))

    run = world.apply(desired)

    assert run.report is not None and run.report.ok
    live = world.live()
    assert live.table is not None
    assert live.table.aliases["front"].targets == (("web", 100),)
    assert len(live.table.nodes["web"].endpoints) == 2
    assert all(world.runtime.is_healthy(i.name) for i in live.instances)
    assert world.apply(desired).report is None  # nothing left to do


def test_an_instance_that_never_turns_healthy_fails_its_wait_and_is_removed(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.fleet.start()
    world.faults.scripts["web"] = NEVER_HEALTHY

    run = world.apply(spec(tmp_path, node("web"), alias("front", ("web", 100))))

    assert run.report is not None and not run.report.ok
    (failed,) = run.report.with_outcome(Outcome.FAILED)
    assert failed.step.id == "wait web/0"
    assert "did not become Healthy within 30s" in failed.detail
    assert world.runtime.containers == {}
    table = world.live().table
    assert table is None or "front" not in table.aliases


def test_a_crash_before_a_step_ends_the_apply_where_it_is(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.faults.crash_before_step = "publish web/0"

    with pytest.raises(Crash):
        world.apply(spec(tmp_path, node("web"), alias("front", ("web", 100))))

    assert [c.state for c in world.runtime.containers.values()] == ["running"]
    assert world.live().table is None
