"""What apply is doing right now, for a live display: which steps run, and what each waits on.

Apply's steps tell it through the hooks apply already has (on_start, on_result); the code
deep inside a step (a build's current instruction, a wait's last probe, a drain's requests
in flight) calls note() with a line about it. Nothing is kept and nothing is shown unless a
display installed itself as the sink (the CLI does, on a terminal): note() is then a no-op.
The step a note belongs to is the one started last in the same thread or task (a context
variable), so it needs no argument threaded through apply.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gitops_nodes.apply import StepResult
    from gitops_nodes.plan import PlanStep

_current: ContextVar[str | None] = ContextVar("gitops_nodes_progress_step", default=None)


class Sink(Protocol):
    """A live display: told when a step starts and ends, and each note in between."""

    def started(self, step_id: str) -> None: ...

    def noted(self, step_id: str, text: str) -> None: ...

    def ended(self, step_id: str) -> None: ...


_sink: Sink | None = None
_lock = threading.Lock()


def install(sink: Sink | None) -> None:
    """Send progress to sink from now on (None: to nobody)."""
    global _sink
    with _lock:
        _sink = sink


def step_started(step: PlanStep) -> None:
    """apply's on_start hook: step runs now, in this thread."""
    _current.set(step.id)
    sink = _sink
    if sink is not None:
        sink.started(step.id)


def step_ended(result: StepResult) -> None:
    """apply's on_result hook: the step is over."""
    sink = _sink
    if sink is not None:
        sink.ended(result.step.id)


def note(text: str) -> None:
    """What the current step is doing now (one line)."""
    sink = _sink
    if sink is None:
        return
    step = _current.get()
    if step is not None:
        sink.noted(step, text)
