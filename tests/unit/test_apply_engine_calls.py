"""Apply at the engine's pace: at most `parallelism` engine calls at once, while the steps
that only wait (health probes, balancers, drains) overlap beyond it; parallelism 1 stays a
serial apply. Real threads on the memory runtime, with short real sleeps standing in for
the engine's and the instances' time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from balancer.table import HealthSettings
from gitops_nodes import workflow
from gitops_nodes.health import Probe
from gitops_nodes.live import LiveInstance
from gitops_nodes.runtime.memory import Faults, MemoryRuntime, VirtualClock
from tests.unit.memory_world import PROJECT, World, node, spec

NODES = 12


class Peak:
    """How many callers are inside at once, at most."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1

    @contextmanager
    def inside(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()


class TimedRuntime(MemoryRuntime):
    """Engine calls and probes that take real time, their concurrency counted."""

    def __init__(self, clock: VirtualClock, faults: Faults) -> None:
        super().__init__(clock, faults)
        self.engine = Peak()
        self.probes = Peak()

    def _engine(self, call: Callable[..., Any], *args: Any) -> Any:
        with self.engine.inside():
            time.sleep(0.02)  # the engine's time
            return call(*args)

    def create_instance(self, *args: Any) -> LiveInstance:
        return self._engine(super().create_instance, *args)  # type: ignore[no-any-return]

    def inspect_instance(self, project: str, name: str) -> LiveInstance | None:
        return self._engine(super().inspect_instance, project, name)  # type: ignore[no-any-return]

    def stop_instance(self, project: str, name: str, grace: float) -> str:
        return self._engine(super().stop_instance, project, name, grace)  # type: ignore[no-any-return]

    def remove_instance(self, project: str, name: str) -> None:
        self._engine(super().remove_instance, project, name)

    def probe_instance(self, instance: LiveInstance, health: HealthSettings) -> Probe:
        with self.probes.inside():
            time.sleep(0.05)  # an HTTP check of a starting instance: no engine call
            return super().probe_instance(instance, health)


def world_with(tmp_path: Path, parallelism: int) -> tuple[World, TimedRuntime]:
    world = World(tmp_path)
    runtime = TimedRuntime(world.clock, world.faults)
    world.runtime = runtime
    world.options = lambda: replace(World.options(world), parallelism=parallelism)  # type: ignore[method-assign]
    return world, runtime


def test_engine_calls_stay_within_parallelism_while_waits_overlap_beyond_it(
    tmp_path: Path,
) -> None:
    world, runtime = world_with(tmp_path, parallelism=2)
    nodes = [node(f"n{i:02d}") for i in range(NODES)]

    up = world.apply(spec(tmp_path, *nodes))
    assert up.report is not None and up.report.ok
    changed = world.apply(spec(tmp_path, *(node(n.name, version="2") for n in nodes)))

    assert changed.report is not None and changed.report.ok
    assert {i.node for i in world.live().instances} == {n.name for n in nodes}
    assert runtime.engine.most == 2  # creates, inspects, stops and removes: two at a time
    assert runtime.probes.most > 2  # health waits of more nodes than that meanwhile


def test_parallelism_one_runs_one_step_at_a_time(tmp_path: Path) -> None:
    world, runtime = world_with(tmp_path, parallelism=1)
    steps = Peak()  # steps begun and not yet reported

    run = workflow.apply(
        spec(tmp_path, *(node(f"n{i}") for i in range(4))),
        runtime,
        PROJECT,
        world.state,
        world.options(),
        on_start=lambda _step: steps.enter(),
        on_result=lambda _result: steps.leave(),
    )

    assert run.report is not None and run.report.ok
    assert steps.most == 1
    assert runtime.engine.most == 1 and runtime.probes.most == 1
