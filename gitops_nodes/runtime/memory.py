"""The Runtime in memory: instances, images and balancers as values, with scripted faults.

Tests of apply, the reconcile and the watch loop run on it in milliseconds, without Docker:
time is a `VirtualClock` (apply's waits move it on instead of sleeping), an instance becomes
Healthy when its `Script` says, and the balancers (`MemoryBalancers`) count Healthy the
instances of the table they serve. Faults are scripted on `Faults`:

- an instance that never becomes Healthy, or turns Unhealthy later (`Script`, per node, or
  `sicken()` for one that exists);
- a balancer that reports late (`lag`) or never again (`lag=math.inf`);
- an engine call that raises (`fail_next`), as the engine refusing it;
- a crash: `Crash`, a BaseException nothing in gitops-nodes catches, raised before a chosen
  mutating engine call (`crash_at_call`) or before a chosen plan step (`crash_before_step`,
  through `step_started`), which ends the apply where it is, like `kill -9`;
- containers added by a third party with an instance's labels copied (`impostor`), with or
  without its owner id, and containers of another owner (`seed(owner=...)`).

What the memory engine holds survives a crash (it is the engine, not the process); a new
apply observes it again. Every table published is kept in `MemoryBalancers.history` with
which instances were Healthy then, for property tests to check the rules after every step.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from balancer.table import HealthSettings, RoutingTable
from gitops_nodes.errors import RuntimeFailure
from gitops_nodes.fleet import BalancerFleet
from gitops_nodes.health import Probe
from gitops_nodes.live import UNLABELLED, LiveInstance, Ownership
from gitops_nodes.runtime.base import ImageCleanup, LogLine
from gitops_nodes.spec.hashing import InstanceConfig
from gitops_nodes.spec.state import BuildRequest, DesiredNode
from gitops_nodes.statedir import BalancerAck, StateDir

MUTATING = ("build", "create", "start", "stop", "remove")


class Crash(BaseException):
    """The process running apply died here (kill -9): nothing catches it, nothing cleans up."""


class VirtualClock:
    """Time that moves only when someone sleeps or advances it; safe across threads."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.lock = threading.Lock()

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += max(0.0, seconds)


@dataclass(frozen=True)
class Script:
    """How an instance's health goes, in seconds after it started: Healthy from ready_after
    (None: never), Unhealthy again from sick_after (None: never)."""

    ready_after: float | None = 0.0
    sick_after: float | None = None


NEVER_HEALTHY = Script(ready_after=None)


@dataclass
class Container:
    """One instance in the memory engine."""

    name: str
    project: str
    node: str
    index: int
    spec_hash: str
    config: InstanceConfig | None
    state: str  # created, running, exited, dead
    port: int | None  # None: nothing published (an impostor started by hand)
    started_at: float
    script: Script
    logs: list[str] = field(default_factory=list)
    owner: str = UNLABELLED  # its owner id label

    def healthy(self, now: float) -> bool:
        """Whether it passes its health check at now."""
        if self.state != "running" or self.script.ready_after is None:
            return False
        since = now - self.started_at
        if since < self.script.ready_after:
            return False
        return self.script.sick_after is None or since < self.script.sick_after

    def live(self) -> LiveInstance:
        return LiveInstance(
            name=self.name,
            node=self.node,
            index=self.index,
            spec_hash=self.spec_hash,
            config=self.config,
            state=self.state,
            port=self.port,
            started_at=self.started_at,
            owner=self.owner,
        )


@dataclass
class Faults:
    """What goes wrong, scripted by a test before (or while) apply runs."""

    scripts: dict[str, Script] = field(default_factory=dict)  # node -> its new instances'
    failing: dict[str, int] = field(default_factory=dict)  # operation -> its next calls that fail
    crash_at_call: int | None = None  # the mutating engine call (from 1) a Crash comes before
    crash_before_step: str | None = None  # a plan step id a Crash comes before (step_started)


@dataclass
class MemoryBalancer:
    """One balancer process: it serves a table `lag` seconds after it was published (never,
    when lag is infinite) and counts Healthy the instances of the table it serves."""

    pid: int
    lag: float = 0.0
    serving: RoutingTable | None = None
    pending: list[tuple[float, RoutingTable]] = field(default_factory=list)

    def catch_up(self, now: float) -> None:
        due = [table for at, table in self.pending if at + self.lag <= now]
        if due:
            self.serving = due[-1]
            self.pending = [(at, t) for at, t in self.pending if at + self.lag > now]


@dataclass(frozen=True)
class Published:
    """A table as published, when, and which of its instances were Healthy at that moment."""

    at: float
    table: RoutingTable
    healthy: frozenset[str]


class MemoryBalancers:
    """The project's balancers: a BalancerFleet whose reports come from memory."""

    def __init__(self, runtime: MemoryRuntime) -> None:
        self.runtime = runtime
        self.balancers: list[MemoryBalancer] = []
        self.history: list[Published] = []
        # Whether publish() adds to history: that takes a pass over every container (which
        # were Healthy then) per table, which tests of the rules need and a benchmark of
        # apply's own cost must not count.
        self.keep_history = True
        self.last: RoutingTable | None = None  # the last table published
        self.pids = itertools.count(40000)
        self.listed: tuple[RoutingTable, frozenset[str]] | None = None

    def start(self, lag: float = 0.0) -> MemoryBalancer:
        """A balancer more, serving the last table published."""
        balancer = MemoryBalancer(next(self.pids), lag, serving=self.last)
        self.balancers.append(balancer)
        return balancer

    def publish(self, table: RoutingTable) -> None:
        now = self.runtime.clock.monotonic()
        for balancer in self.balancers:
            balancer.pending.append((now, table))
        self.last = table
        if self.keep_history:
            self.history.append(Published(now, table, self.runtime.healthy_names()))

    def acks(self) -> list[BalancerAck]:
        now = self.runtime.clock.monotonic()
        acks = []
        for balancer in self.balancers:
            if balancer.pending:
                balancer.catch_up(now)
            table = balancer.serving
            if table is None:
                acks.append(BalancerAck(balancer.pid, 0, {}))
                continue
            listed = self._listed(table)
            healthy = frozenset(name for name in listed if self.runtime.is_healthy(name))
            acks.append(BalancerAck(balancer.pid, table.generation, {}, healthy))
        return acks

    def _listed(self, table: RoutingTable) -> frozenset[str]:
        """The instances a table lists (apply polls the reports often: kept per table)."""
        if self.listed is None or self.listed[0] is not table:
            names = frozenset(e.instance for entry in table.nodes.values() for e in entry.endpoints)
            self.listed = (table, names)
        return self.listed[1]

    def sync(self, table: RoutingTable | None) -> None:
        return None  # like balancers that follow the table file: nothing to hand over


class MemoryLogStream:
    """An instance's stored lines; follow ends at the last one (nothing prints meanwhile)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.closed = False

    def __iter__(self) -> Iterator[LogLine]:
        for text in self.lines:
            if self.closed:
                return
            yield LogLine(0, "", text)

    def close(self) -> None:
        self.closed = True


class MemoryRuntime:
    """A Runtime whose engine is a dict; see the module docstring for the faults."""

    name = "memory"

    def __init__(self, clock: VirtualClock | None = None, faults: Faults | None = None) -> None:
        self.clock = clock or VirtualClock()
        self.faults = faults or Faults()
        self.containers: dict[str, Container] = {}
        self.images: dict[str, str] = {}  # tag -> project that built it
        self.fleets: dict[str, MemoryBalancers] = {}
        self.calls: list[tuple[str, str]] = []  # (operation, what): every mutating call made
        self.lock = threading.RLock()
        self.ports = itertools.count(20000)
        self.serial = itertools.count(1)

    # -- faults ---------------------------------------------------------------------------

    def fail_next(self, operation: str, times: int = 1) -> None:
        """Make the next `times` calls of operation (create, start, stop, remove, build,
        inspect, probe, list) raise RuntimeFailure, as an engine refusing them."""
        self.faults.failing[operation] = self.faults.failing.get(operation, 0) + times

    def sicken(self, name: str) -> None:
        """The instance's health check fails from now on (its container keeps running)."""
        with self.lock:
            found = self.containers[name]
            found.script = replace(found.script, sick_after=self.clock.now - found.started_at)

    def step_started(self, step: object) -> None:
        """A hook for apply's step starts: the Crash scripted before that step."""
        step_id = getattr(step, "id", None)
        if step_id is not None and step_id == self.faults.crash_before_step:
            self.faults.crash_before_step = None
            raise Crash(f"killed before step {step_id}")

    def _call(self, operation: str, what: str) -> None:
        with self.lock:
            if operation in MUTATING:
                self.calls.append((operation, what))
                if self.faults.crash_at_call == len(self.calls):
                    self.faults.crash_at_call = None
                    raise Crash(f"killed before {operation} {what}")
            if self.faults.failing.get(operation, 0) > 0:
                self.faults.failing[operation] -= 1
                raise RuntimeFailure(f"{operation} {what} failed: the engine refused (scripted)")

    # -- what tests read and seed ---------------------------------------------------------

    def is_healthy(self, name: str) -> bool:
        found = self.containers.get(name)
        return found is not None and found.healthy(self.clock.now)

    def healthy_names(self) -> frozenset[str]:
        now = self.clock.now
        return frozenset(n for n, c in self.containers.items() if c.healthy(now))

    def seed(
        self,
        project: str,
        node: DesiredNode,
        index: int,
        *,
        state: str = "running",
        script: Script | None = None,
        spec_hash: str | None = None,
        owner: str = UNLABELLED,
    ) -> LiveInstance:
        """A container that exists before apply runs (left by an earlier or a killed one, or
        made by another state directory: owner is its owner id label)."""
        with self.lock:
            container = self._new(project, node, index, script or Script(), state, owner)
            if spec_hash is not None:
                container.spec_hash = spec_hash
            return container.live()

    def impostor(
        self, of: str, *, copy_owner: bool = True, name: str | None = None
    ) -> LiveInstance:
        """A container a third party started by hand with the labels of instance `of` copied
        (project, node, index, spec hash, config; the owner id too when copy_owner), running
        and Healthy but with no published port. Its default name sorts before every name
        the engine gives, so that an order by name would prefer it."""
        with self.lock:
            real = self.containers[of]
            copy = replace(
                real,
                name=name or f"{real.project}-{real.node}-{real.index}--copy",
                port=None,
                started_at=self.clock.now,
                script=Script(),
                logs=[],
                owner=real.owner if copy_owner else UNLABELLED,
            )
            self.containers[copy.name] = copy
            return copy.live()

    def fleet(self, project: str) -> MemoryBalancers:
        with self.lock:
            return self.fleets.setdefault(project, MemoryBalancers(self))

    def _new(
        self,
        project: str,
        node: DesiredNode,
        index: int,
        script: Script,
        state: str,
        owner: str = UNLABELLED,
    ) -> Container:
        name = f"{project}-{node.name}-{index}-{next(self.serial):06x}"
        container = Container(
            name,
            project,
            node.name,
            index,
            node.spec_hash,
            node.config,
            state,
            next(self.ports),
            self.clock.now,
            script,
            owner=owner,
        )
        self.containers[name] = container
        return container

    # -- the Runtime interface ------------------------------------------------------------

    def list_instances(self, project: str) -> list[LiveInstance]:
        self._call("list", project)
        with self.lock:
            return [c.live() for c in self.containers.values() if c.project == project]

    def host_name(self) -> str:
        return ""

    def list_images(self, project: str) -> set[str]:
        with self.lock:
            return set(self.images)

    def build_image(self, project: str, root: Path, request: BuildRequest) -> None:
        self._call("build", request.tag)
        with self.lock:
            self.images[request.tag] = project

    def prepare_project(self, project: str, state: StateDir) -> None:
        return None

    def prepare_node(
        self, project: str, name: str, node: DesiredNode | None, ownership: Ownership
    ) -> None:
        return None

    def create_instance(
        self, project: str, node: DesiredNode, index: int, ownership: Ownership
    ) -> LiveInstance:
        self._call("create", f"{node.name}/{index}")
        with self.lock:
            script = self.faults.scripts.get(node.name, Script())
            return self._new(project, node, index, script, "running", ownership.owner).live()

    def start_instance(self, project: str, name: str) -> LiveInstance:
        self._call("start", name)
        with self.lock:
            found = self._ours(project, name)
            if found is None:
                raise RuntimeFailure(f"{name} is gone: it cannot be started again")
            found.state, found.started_at, found.port = "running", self.clock.now, next(self.ports)
            return found.live()

    def inspect_instance(self, project: str, name: str) -> LiveInstance | None:
        self._call("inspect", name)
        with self.lock:
            found = self._ours(project, name)
            return found.live() if found else None

    def probe_instance(self, instance: LiveInstance, health: HealthSettings) -> Probe:
        self._call("probe", instance.name)
        with self.lock:
            found = self.containers.get(instance.name)
            if found is None or found.state != "running":
                return Probe(False, False, "connect failed: nothing listens")
            if found.healthy(self.clock.now):
                return Probe(True, True, f"GET {health.path or '/'} answered 200")
            return Probe(True, False, f"GET {health.path or '/'} answered 503")

    def discovery(self, project: str, node: str, port: int) -> str | None:
        return None  # apply lists each instance in the table, as on Docker

    def stop_instance(self, project: str, name: str, grace: float) -> str:
        self._call("stop", name)
        with self.lock:
            found = self._ours(project, name)
            if found is not None:
                found.state = "exited"
            return name

    def remove_instance(self, project: str, name: str) -> None:
        self._call("remove", name)
        with self.lock:
            if self._ours(project, name) is not None:
                del self.containers[name]

    def instance_logs(self, name: str, lines: int) -> str:
        with self.lock:
            found = self.containers.get(name)
            return "\n".join(found.logs[-lines:]) if found else ""

    def log_stream(self, name: str, tail: int | None, follow: bool) -> MemoryLogStream:
        with self.lock:
            found = self.containers.get(name)
            if found is None:
                raise RuntimeFailure(f"{name} no longer exists")
            lines = found.logs if tail is None else found.logs[-tail:] if tail else []
            return MemoryLogStream(list(lines))

    def balancers(self, project: str, state: StateDir) -> BalancerFleet:
        return self.fleet(project)

    def served_table(self, project: str, state: StateDir) -> RoutingTable | None:
        return None  # like the docker runtime's: its balancers follow the table file

    def remove_images(self, project: str) -> ImageCleanup:
        with self.lock:
            users: dict[str, list[str]] = {}
            for c in self.containers.values():
                if c.config is not None:
                    users.setdefault(c.config.image, []).append(c.name)
            built = [t for t, p in self.images.items() if p == project]
            gone = tuple(t for t in built if t not in users)
            for tag in gone:
                del self.images[tag]
            left = tuple(
                f"image {t}: in use by container {', '.join(sorted(users[t]))}"
                for t in built
                if t in users
            )
            return ImageCleanup(gone, left)

    def remove_project(self, project: str, state: StateDir) -> list[str]:
        return []

    def _ours(self, project: str, name: str) -> Container | None:
        found = self.containers.get(name)
        return found if found is not None and found.project == project else None


INFINITE_LAG = math.inf  # a balancer that never reports a newer table again
