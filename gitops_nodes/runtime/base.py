"""The Runtime interface: the only way gitops-nodes touches where instances run.

Two implementations: `docker.py` (containers on one engine; apply creates, publishes, drains
and removes each instance itself) and `swarm.py` (one Swarm service per node; Swarm starts,
replaces and retires the tasks, apply's steps follow it, and balancers find the tasks by
DNS). The plan is the same for both: what differs is how a step is carried out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from balancer.table import HealthSettings, RoutingTable
from gitops_nodes.fleet import BalancerFleet
from gitops_nodes.health import Probe
from gitops_nodes.live import LiveInstance, Ownership
from gitops_nodes.spec.state import BuildRequest, DesiredNode
from gitops_nodes.statedir import StateDir


@dataclass(frozen=True)
class LogLine:
    """One line an instance printed, with the engine's time for it."""

    at: int  # nanoseconds since the epoch, to merge instances' lines in order; 0 when unknown
    stamp: str  # that time as the engine wrote it (RFC 3339, UTC)
    text: str


@dataclass(frozen=True)
class ImageCleanup:
    """What removing a project's images did: the tags removed, and each image left with why."""

    removed: tuple[str, ...] = ()
    left: tuple[str, ...] = ()


class LogStream(Protocol):
    """An instance's log lines, oldest first; close() ends the iteration from any thread."""

    def __iter__(self) -> Iterator[LogLine]: ...

    def close(self) -> None: ...


class Runtime(Protocol):
    """Creates, inspects and removes a project's instances; everything it owns is labelled."""

    name: str  # "docker" or "swarm", as --runtime and the settings file spell it

    def list_instances(self, project: str) -> list[LiveInstance]:
        """Every instance carrying the project's label, read from labels alone, whoever owns
        it (LiveInstance.owner; observe sorts ours from the others)."""
        ...

    def host_name(self) -> str:
        """The one machine every instance runs on, as its engine names itself, for status;
        "" where instances may run on several (a Swarm's name their own hosts)."""
        ...

    def list_images(self, project: str) -> set[str]:
        """The build tags present on the engine (any project may reuse a content-addressed one)."""
        ...

    def build_image(self, project: str, root: Path, request: BuildRequest) -> None:
        """Build request.context (relative to root) as request.tag, labelled as built for
        project (never with the project label itself, which containers run from it would
        inherit), and make it available wherever the project's instances may run."""
        ...

    def prepare_project(self, project: str, state: StateDir) -> None:
        """Make what the project needs before its nodes (Swarm: the overlay network and the
        balancer service); called by apply before it plans, never by plan."""
        ...

    def prepare_node(
        self, project: str, name: str, node: DesiredNode | None, ownership: Ownership
    ) -> None:
        """Bring what the runtime keeps per node in line with the spec, once per apply, before
        the node's first step (node None: the spec no longer has it). Docker keeps nothing
        per node; Swarm keeps a service, whose spec and replica count change here, and which
        it refuses to change when the service is not ownership's."""
        ...

    def create_instance(
        self, project: str, node: DesiredNode, index: int, ownership: Ownership
    ) -> LiveInstance:
        """Start one more instance of node with its spec, labelled with ownership's owner id:
        the one at index where the runtime decides (Docker), or the next new task the node's
        service starts (Swarm)."""
        ...

    def start_instance(self, project: str, name: str) -> LiveInstance:
        """Start a stopped instance again as it was (a suspended node resuming); its port
        may be another one than before."""
        ...

    def inspect_instance(self, project: str, name: str) -> LiveInstance | None:
        """The instance as it is now; None when it no longer exists."""
        ...

    def probe_instance(self, instance: LiveInstance, health: HealthSettings) -> Probe:
        """Check the instance's health once, the way this runtime can from where apply runs:
        over loopback (Docker), or from the task's state, its check running inside (Swarm)."""
        ...

    def discovery(self, project: str, node: str, port: int) -> str | None:
        """The "host:port" whose DNS answers balancers resolve to find the node's instances
        themselves (Swarm: tasks.<service>), or None when apply lists them in the table."""
        ...

    def stop_instance(self, project: str, name: str, grace: float) -> str:
        """Stop the instance, killing it after grace seconds; gone counts as stopped. Returns
        the instance that stops: this one, or where the runtime picks which instance leaves
        (Swarm scaling a service down), the one it picked."""
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

    def balancers(self, project: str, state: StateDir) -> BalancerFleet:
        """Where the project's routing tables go and its balancers report."""
        ...

    def served_table(self, project: str, state: StateDir) -> RoutingTable | None:
        """The table the project's balancers serve, asked of them, for a state directory
        that has none (lost with the directory that published it); None where balancers
        follow the state directory's file (there is nothing else to ask) or none answers.
        Changes nothing, on the engine or in the state directory."""
        ...

    def remove_images(self, project: str) -> ImageCleanup:
        """Remove the images the project built that no container uses; the tags removed, and
        the images left with the reason (the containers that use them)."""
        ...

    def remove_project(self, project: str, state: StateDir) -> list[str]:
        """Remove what prepare_project made, after the last node is gone; what was removed."""
        ...
