"""What a live display hears of an apply (gitops_nodes/progress.py), on the memory runtime:
each step's start and end, and what a running step waits on; and that the rich display draws
it on a terminal and stays silent when no display is installed."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitops_nodes import progress, workflow
from gitops_nodes.apply import StepResult
from gitops_nodes.plan import PlanStep
from gitops_nodes.runtime.memory import Script
from gitops_nodes.spec.state import DesiredNode
from tests.unit.memory_world import PROJECT, World, node, spec


class Recorder:
    """A progress sink that keeps what it hears."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def started(self, step_id: str) -> None:
        with self.lock:
            self.events.append(("started", step_id, ""))

    def noted(self, step_id: str, text: str) -> None:
        with self.lock:
            self.events.append(("noted", step_id, text))

    def ended(self, step_id: str) -> None:
        with self.lock:
            self.events.append(("ended", step_id, ""))

    def notes(self, step_id: str) -> list[str]:
        return [text for kind, step, text in self.events if kind == "noted" and step == step_id]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    sink = Recorder()
    progress.install(sink)
    yield sink
    progress.install(None)


def apply(world: World, *nodes: DesiredNode) -> workflow.ApplyRun:
    def started(step: PlanStep) -> None:
        world.runtime.step_started(step)
        progress.step_started(step)

    def ended(result: StepResult) -> None:
        progress.step_ended(result)

    return workflow.apply(
        spec(world.root, *nodes),
        world.runtime,
        PROJECT,
        world.state,
        world.options(),
        on_result=ended,
        on_start=started,
    )


def test_a_display_hears_every_step_and_what_waits_and_drains_are_doing(
    tmp_path: Path, recorder: Recorder
) -> None:
    world = World(tmp_path)
    world.fleet.start(lag=2.0)  # a balancer two (virtual) seconds behind: drains wait on it
    world.faults.scripts["a"] = Script(ready_after=3.0)  # Healthy three seconds after start
    first_run = apply(world, node("a"))
    assert first_run.report is not None and first_run.report.ok
    first = recorder.notes("wait a/0")
    assert first and "not Healthy yet (0/1 checks passed)" in first[0], recorder.events

    run = apply(world, node("a", version="2"))

    assert run.report is not None and run.report.ok
    drains = [step.id for step in run.plan.steps() if step.id.startswith("drain")]
    assert drains, [step.id for step in run.plan.steps()]
    noted = recorder.notes(drains[0])
    assert noted and "requests in flight, 1 balancer(s) to finish" in noted[0], recorder.events
    # Every step started was ended, in that order, and notes only came between the two.
    for step in run.plan.steps():
        kinds = [kind for kind, step_id, _ in recorder.events if step_id == step.id]
        assert kinds[0] == "started" and kinds[-1] == "ended", (step.id, kinds)


def test_notes_without_a_display_go_nowhere() -> None:
    progress.install(None)
    progress.note("nobody listens")  # no sink, no step: nothing happens, nothing raises


def test_the_rich_display_draws_the_running_step_and_its_note() -> None:
    from rich.console import Console

    from gitops_nodes.liveview import LiveView

    screen = io.StringIO()
    view = LiveView(Console(file=screen, force_terminal=True, width=120))
    view.started("build app")
    view.noted("build app", "Step 3/6 : RUN pip install --no-index\nsecond line not shown")
    view.live.refresh()
    drawn = screen.getvalue()
    view.ended("build app")
    view.stop()

    assert "build app" in drawn and "Step 3/6 : RUN pip install --no-index" in drawn
    assert "second line not shown" not in drawn
    assert view.running == {}
