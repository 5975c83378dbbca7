"""The live state: what the project owns in the runtime and what it last published, as values."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from balancer.table import RoutingTable
from gitops_nodes.spec.hashing import InstanceConfig

# The engine's words for a container that serves or will; "starting" is a Swarm task whose
# container runs but whose health check has not passed yet (Docker containers never say it).
ALIVE_STATES = frozenset({"created", "starting", "running", "restarting"})
STARTABLE = frozenset({"exited"})  # a stopped container that starts again as it was
# A Swarm task on a host the manager counts down: shown by status (Unhealthy), left out of
# plans. Swarm starts its replacement on another host by itself, and stops it when the host
# is back; an apply that waited for it to stop would wait for the host.
LOST = "lost"
# A running container the balancer has counted Unhealthy, its checks failing, for longer than
# watch lets one be (--replace-unhealthy-after): hung code, a deadlock. Not alive, so plan
# replaces it make-before-break, as Swarm replaces a task whose health check keeps failing.
UNRESPONSIVE = "unresponsive"
LOOPBACK = "127.0.0.1"
UNLABELLED = ""  # the owner of a container made before owner labels existed


@dataclass(frozen=True)
class Ownership:
    """Which containers of a project a state directory counts as its own: those carrying its
    owner id, and those of the owners it adopted (UNLABELLED: made before owner labels)."""

    owner: str
    adopted: frozenset[str] = frozenset()

    def owns(self, instance: LiveInstance) -> bool:
        label = instance.owner
        return (bool(label) and label == self.owner) or label in self.adopted

    def adopting(self, owners: Collection[str]) -> Ownership:
        """This ownership with owners adopted too (--adopt)."""
        return Ownership(self.owner, self.adopted | (frozenset(owners) - {self.owner}))


# What a LiveState made without a state directory (tests, tools) claims: containers with no
# owner label, as everything was before owner labels existed.
UNOWNED = Ownership(UNLABELLED, frozenset({UNLABELLED}))


@dataclass(frozen=True)
class LiveInstance:
    """One instance of the project (a container, or a Swarm task), as its labels and the
    engine describe it."""

    name: str
    node: str
    index: int
    spec_hash: str
    config: InstanceConfig | None
    # The engine's word: created, running, restarting, exited, paused, dead, removing, or
    # LOST (a Swarm task on a host that is down).
    state: str
    port: int | None  # the port balancers reach it on at host, once known
    started_at: float | None = None  # seconds since the epoch, when running
    telemetry_port: int | None = None  # config.telemetry_port as published on 127.0.0.1
    socket: str | None = None  # a Unix socket it also serves on, on this host (docker runtime)
    # Where balancers reach it: a Docker container's port is published on loopback; a Swarm
    # task listens on its address in the project's overlay network.
    host: str = LOOPBACK
    owner: str = UNLABELLED  # the owner id label it carries (labels.OWNER)
    # The machine it runs on, as its Docker engine names itself ("" when not known): on a
    # Swarm, the task's node; on one host, that engine.
    hostname: str = ""

    @property
    def alive(self) -> bool:
        """Whether the container exists in a state that can serve (or will, once started)."""
        return self.state in ALIVE_STATES


@dataclass(frozen=True)
class LiveState:
    """Everything plan needs to know about what exists now."""

    project: str
    instances: tuple[LiveInstance, ...] = ()
    images: frozenset[str] = frozenset()
    table: RoutingTable | None = None
    # The project's containers another state directory owns: never planned for, only reported.
    foreign: tuple[LiveInstance, ...] = ()
    ownership: Ownership = UNOWNED
    by_node: Mapping[str, tuple[LiveInstance, ...]] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, list[LiveInstance]] = {}
        for instance in sorted(self.instances, key=lambda i: (i.node, i.index, i.name)):
            grouped.setdefault(instance.node, []).append(instance)
        frozen = {node: tuple(items) for node, items in sorted(grouped.items())}
        object.__setattr__(self, "by_node", MappingProxyType(frozen))

    def with_unresponsive(self, names: Collection[str]) -> LiveState:
        """This state with the running instances named marked UNRESPONSIVE (see there)."""
        marked = tuple(
            replace(i, state=UNRESPONSIVE) if i.name in names and i.state == "running" else i
            for i in self.instances
        )
        if marked == self.instances:
            return self
        return replace(self, instances=marked)

    def node_names(self) -> set[str]:
        """Nodes that exist: with containers, or published in the routing table."""
        published = set(self.table.nodes) if self.table else set()
        return set(self.by_node) | published

    def digest(self, images: Collection[str] = ()) -> str:
        """A digest of what plan reads from the live state, to notice that it changed.

        Of the engine's images only `images` count, the tags the plan would build: images are
        shared by every project on the engine, and another project's build must not make this
        project's saved plan stale.
        """
        # repr of sorted tuples of plain values: stable, and cheap at thousands of instances.
        instances = sorted(
            (i.name, i.node, i.index, i.spec_hash, i.alive, i.state in STARTABLE)
            for i in self.instances
        )
        table = self.table
        published = (
            (
                sorted(
                    (
                        name,
                        entry.endpoints,
                        entry.min_healthy,
                        entry.health,
                        entry.timeouts,
                        entry.suspended,
                        entry.telemetry_path,
                        entry.prefix_rewrite,
                    )
                    for name, entry in table.nodes.items()
                ),
                sorted(
                    (name, entry.targets, entry.prefix_rewrite)
                    for name, entry in table.aliases.items()
                ),
            )
            if table is not None
            else None
        )
        present = sorted(tag for tag in images if tag in self.images)
        payload = repr((instances, present, published))
        return hashlib.sha256(payload.encode()).hexdigest()
