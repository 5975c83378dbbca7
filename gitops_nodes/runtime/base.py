"""The Runtime interface: the only way gitops-nodes touches where instances run."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from gitops_nodes.live import LiveInstance
from gitops_nodes.spec.state import BuildRequest, DesiredNode


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

    def remove_images(self, project: str) -> list[str]:
        """Remove the images the project built that no container uses; the tags removed."""
        ...
