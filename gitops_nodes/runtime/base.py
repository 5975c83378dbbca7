"""The Runtime interface: the only way gitops-nodes touches where instances run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gitops_nodes.live import LiveInstance
from gitops_nodes.spec.state import BuildRequest, DesiredNode


@dataclass(frozen=True)
class LogLine:
    """One line an instance printed, with the engine's time for it."""

    at: int  # nanoseconds since the epoch, to merge instances' lines in order; 0 when unknown
    stamp: str  # that time as the engine wrote it (RFC 3339, UTC)
    text: str


class LogStream(Protocol):
    """An instance's log lines, oldest first; close() ends the iteration from any thread."""

    def __iter__(self) -> Iterator[LogLine]: ...

    def close(self) -> None: ...


class Runtime(Protocol):
    """Creates, inspects and removes a project's instances; everything it owns is labelled."""

    def list_instances(self, project: str) -> list[LiveInstance]:
        """Every instance carrying the project's label, read from labels alone."""
        ...

    def list_images(self, project: str) -> set[str]:
        """The build tags present on the engine (any project may reuse a content-addressed one)."""
        ...

    def build_image(self, project: str, root: Path, request: BuildRequest) -> None:
        """Build request.context (relative to root) as request.tag, labelled for project."""
        ...

    def create_instance(self, project: str, node: DesiredNode, index: int) -> LiveInstance:
        """Create and start one instance; its port is published on 127.0.0.1 only."""
        ...

    def start_instance(self, project: str, name: str) -> LiveInstance:
        """Start a stopped instance again as it was (a suspended node resuming); its port
        may be another one than before."""
        ...

    def inspect_instance(self, project: str, name: str) -> LiveInstance | None:
        """The instance as it is now; None when it no longer exists."""
        ...

    def stop_instance(self, project: str, name: str, grace: float) -> None:
        """Ask the instance to stop, killing it after grace seconds. Gone counts as stopped."""
        ...

    def remove_instance(self, project: str, name: str) -> None:
        """Remove the instance if it is still the project's. Gone counts as removed."""
        ...

    def instance_logs(self, name: str, lines: int) -> str:
        """The last lines the instance printed, for error messages."""
        ...

    def log_stream(self, name: str, tail: int | None, follow: bool) -> LogStream:
        """The instance's output (stdout and stderr) line by line: its last tail lines (all
        when None), then, with follow, each new line as it comes until the instance stops or
        the stream is closed."""
        ...

    def remove_images(self, project: str) -> list[str]:
        """Remove the images the project built that no container uses; the tags removed."""
        ...
