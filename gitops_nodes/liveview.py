"""The live progress display on a terminal: what apply runs now, redrawn in place with rich.

Only the CLI imports this, and only when its output is a terminal; without one, nothing here
runs and the output is the plain lines it always was. The display is a progress Sink
(gitops_nodes/progress.py): one line per running step with a spinner, its elapsed time and
its latest note (a build's instruction, a wait's last probe, a drain's requests in flight).
While it shows, whatever the command prints or logs is written above it, whole lines,
unchanged, so the scrollback holds exactly the lines it would hold without a terminal.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from gitops_nodes import progress

REFRESH_PER_SECOND = 8
NOTE_WIDTH = 160  # characters of a note kept (a terminal line shows what fits)


@dataclass
class _Running:
    started: float
    note: str = ""


class LiveView:
    """The running steps, as a rich renderable that redraws itself (a progress Sink). The
    display starts with the first step, so what comes before (the plan, a question asked)
    is printed as usual."""

    def __init__(self, console: Console) -> None:
        self.running: dict[str, _Running] = {}
        self.lock = threading.Lock()
        self.spinner = Spinner("dots")
        self.live = Live(
            self,
            console=console,
            refresh_per_second=REFRESH_PER_SECOND,
            transient=True,  # the display goes when done: the lines printed above it stay
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self.shown = False
        self.moved: list[tuple[logging.StreamHandler[Any], IO[str]]] = []

    def started(self, step_id: str) -> None:
        with self.lock:
            self.running[step_id] = _Running(time.monotonic())
            if not self.shown:
                self.shown = True
                self.live.start()
                # Log handlers hold the stream they were made with: point them at the
                # redirected one, so a log line is written above the display, not through it.
                self.moved = _follow_redirect()

    def stop(self) -> None:
        with self.lock:
            if not self.shown:
                return
            self.shown = False
            for handler, original in self.moved:
                handler.setStream(original)
            self.moved = []
        self.live.stop()

    def noted(self, step_id: str, text: str) -> None:
        line = text.splitlines()[0] if text else ""
        with self.lock:
            running = self.running.get(step_id)
            if running is not None:
                running.note = line[:NOTE_WIDTH]

    def ended(self, step_id: str) -> None:
        with self.lock:
            self.running.pop(step_id, None)

    def __rich__(self) -> RenderableType:
        with self.lock:
            rows = sorted(self.running.items(), key=lambda item: item[1].started)
        if not rows:
            return Group()
        now = time.monotonic()
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, style="bold")
        table.add_column(no_wrap=True, justify="right")
        table.add_column(no_wrap=True, overflow="ellipsis", style="dim")
        for step_id, running in rows:
            table.add_row(
                self.spinner.render(now),
                step_id,
                f"{now - running.started:.0f}s",
                Text(running.note),
            )
        return table


@contextmanager
def live_progress(stream: IO[str]) -> Iterator[LiveView]:
    """Show the running steps on stream (a terminal) while the block runs; prints and log
    lines meanwhile go above the display, as they are."""
    # soft_wrap: a printed line is passed on whole (the terminal wraps it), not re-wrapped.
    view = LiveView(Console(file=stream, soft_wrap=True))
    progress.install(view)
    try:
        yield view
    finally:
        progress.install(None)
        view.stop()


def _follow_redirect() -> list[tuple[logging.StreamHandler[Any], IO[str]]]:
    moved: list[tuple[logging.StreamHandler[Any], IO[str]]] = []
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.StreamHandler):
            continue
        stream = handler.stream
        if stream is sys.__stderr__ or stream is sys.__stdout__:
            target = sys.stderr if stream is sys.__stderr__ else sys.stdout
            original = handler.setStream(target)
            if original is not None:
                moved.append((handler, original))
    return moved
