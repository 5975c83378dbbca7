"""Walks a plan's DAG on a Runtime with a bounded pool, and reports every step's outcome.

Independent branches run in parallel. On the first failure nothing new starts, the steps
already running finish, and the report says what was done, what failed and why, and what
was never started. Because aliases are published only after the nodes they gain are Healthy,
stopping early leaves every alias on the instances that already served it.

Two ways a node's instances reach the balancers, decided by the runtime:
- listed (Docker): apply puts each instance in the table and takes it out, so it makes before
  it breaks itself: publish the new one, wait until balancers count it Healthy, unpublish the
  old one, wait until they finished its requests, stop it;
- discovered (Swarm): the table names a DNS name and balancers find the instances by
  themselves, as the runtime starts and retires them; apply's steps then wait on the same
  reports (the new instance counted Healthy everywhere, the retired one gone everywhere).
"""

from __future__ import annotations

import heapq
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType
from typing import ParamSpec, TypeVar

from balancer.table import (
    AliasEntry,
    Endpoint,
    HealthSettings,
    NodeEntry,
    RoutingTable,
    TableEncoder,
    write_table,
)
from gitops_nodes import progress
from gitops_nodes.clock import SYSTEM_CLOCK, Clock
from gitops_nodes.errors import GitopsNodesError, RuntimeFailure
from gitops_nodes.fleet import BalancerFleet
from gitops_nodes.live import LiveInstance, LiveState
from gitops_nodes.plan import OTHER_OWNER, Plan, PlanStep, Step
from gitops_nodes.rollout import gaining
from gitops_nodes.runtime.base import Runtime
from gitops_nodes.spec.state import DesiredState
from gitops_nodes.statedir import BalancerAck, StateDir

HEALTH_POLL = 0.1  # seconds between probes while waiting; short so apply is not slowed by it
# While a listed instance's probes fail, how often the engine is asked whether it exited: each
# poll's inspect, times every instance waited on at once, is load on the engine the creates
# and removes of the same apply wait behind.
INSPECT_POLL = 0.5
DRAIN_POLL = 0.05
# Steps in flight per engine call allowed at once: most of a rolling change's steps wait
# (health probes, balancers taking a table, drains) and leave the engine idle meanwhile.
STEPS_PER_ENGINE_CALL = 4

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Outcome(StrEnum):
    """How a step ended."""

    DONE = "done"
    FAILED = "failed"
    NOT_STARTED = "not started"


@dataclass(frozen=True)
class StepResult:
    """One step's outcome, with what happened in words and how long it took."""

    step: PlanStep
    outcome: Outcome
    detail: str
    seconds: float


@dataclass(frozen=True)
class ApplyReport:
    """Every step of the plan with its outcome, in plan order (on_result hears them in the
    order they ended)."""

    results: tuple[StepResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.outcome is Outcome.DONE for r in self.results)

    def with_outcome(self, outcome: Outcome) -> list[StepResult]:
        return [r for r in self.results if r.outcome is outcome]


@dataclass(frozen=True)
class ApplyOptions:
    """How apply behaves; the defaults suit one Docker host."""

    # Engine calls (create, start, stop, remove, inspect, build) at once; the steps that
    # wait in between run beside them, up to STEPS_PER_ENGINE_CALL times as many (1: one
    # step at a time). 8: on a 2-core host, 50 nodes from nothing to Healthy took 1.80x the
    # engine's own create+start (8 threads) at 4 steps at once, 1.43x at 8, 1.08x at 16
    # (benchmarks/apply_scale.py); what more steps gained was the waits', while engine calls
    # at once compete for the same cores.
    parallelism: int = 8
    drain_timeout: float = 30.0  # for balancers to finish requests on a removed instance
    stop_grace: float = 5.0  # for the instance itself to exit after SIGTERM
    clock: Clock = SYSTEM_CLOCK  # what deadlines are measured with (tests: a virtual one)


class _Published:
    """The routing table apply is building up, published whole on every change.

    A change is made under `lock` and staged there as the next generation (stage()); it is
    written out (flush()) outside the lock, by one writer at a time, and a writer writes the
    newest table staged. So the publishes of independent nodes that come together share one
    write (group commit) instead of queueing one write each, each of the whole table (at
    hundreds of nodes, writing is what costs); a publish still returns only once a table
    holding its change is written and handed to the balancers.

    Every change goes through the methods that make it (rotate, include, configure, drop,
    route, unroute), which mark what it touched: a stage rebuilds only those nodes' entries
    and keeps the others' from the stage before, so a change of every node, a few publishes
    each, costs in proportion to the nodes and not to their square.
    """

    def __init__(
        self,
        live: LiveState,
        desired: DesiredState,
        fleet: BalancerFleet,
        discover: dict[str, str],
        on_publish: Callable[[RoutingTable], None] | None = None,
        pending: frozenset[str] = frozenset(),
    ) -> None:
        self.on_publish = on_publish
        self.fleet = fleet
        self.lock = threading.Lock()
        self.desired = desired
        table = live.table or RoutingTable()
        self.generation = table.generation  # the last staged
        self.started_at = table.generation  # the one published before this apply
        self.staged: RoutingTable | None = None
        self.flushed = table.generation  # the last written and handed to the balancers
        self.writing = threading.Lock()  # one writer at a time, in generation order
        self.encoder = TableEncoder()  # the writer's: it re-encodes only the changed entries
        # node -> the name balancers resolve for its instances (a discovered node lists none)
        self.discover = {
            **{n: e.discover for n, e in table.nodes.items() if e.discover},
            **discover,
        }
        # Where each instance listens now: the engine may have moved it since (a restart).
        listening = {i.name: i for i in live.instances if i.port}
        self._rotation: dict[str, tuple[Endpoint, ...]] = {
            node: tuple(
                replace(_endpoint(listening[e.instance]), host=e.host)
                for e in entry.endpoints
                if e.instance in listening
            )
            for node, entry in table.nodes.items()
        }
        # Each node's entry as last published; its endpoints come from rotation instead.
        self._settings: dict[str, NodeEntry] = dict(table.nodes)
        for node, instances in live.by_node.items():
            if node not in self._rotation:
                self._rotation[node] = (
                    ()
                    if node in self.discover
                    else tuple(
                        _endpoint(i)
                        for i in instances
                        if i.alive and i.port and i.name not in pending
                    )
                )
        self._aliases: dict[str, AliasEntry] = dict(table.aliases)
        # The generation that took each instance out of the table: drains wait for it.
        self.removed_at: dict[str, int] = {}
        # What the last stage built, by node (in name order), and the instances each entry
        # lists; before the first stage, the table published before this apply's. `written`
        # counts the entries listing each instance: it left the table when that reaches 0.
        self._entries: dict[str, NodeEntry] = {}
        self._listed = {
            node: frozenset(e.instance for e in entry.endpoints)
            for node, entry in table.nodes.items()
        }
        self._written: Counter[str] = Counter(i for names in self._listed.values() for i in names)
        self._staged_aliases: Mapping[str, AliasEntry] = MappingProxyType({})
        # Changed since the last stage: the first one builds every node and alias.
        self._dirty: set[str] = set(self._rotation) | set(self._listed)
        self._aliases_dirty = True

    @property
    def rotation(self) -> Mapping[str, tuple[Endpoint, ...]]:
        """Each node's instances in rotation, as the next stage will list them."""
        return MappingProxyType(self._rotation)

    @property
    def aliases(self) -> Mapping[str, AliasEntry]:
        return MappingProxyType(self._aliases)

    def rotate(self, node: str, endpoints: Iterable[Endpoint]) -> None:
        """Put exactly endpoints in the node's rotation."""
        self._rotation[node] = tuple(endpoints)
        self._dirty.add(node)

    def include(self, node: str) -> None:
        """Give the node an entry (with nothing in rotation) when it has none."""
        if node not in self._rotation:
            self.rotate(node, ())

    def configure(self, node: str) -> NodeEntry:
        """Take the node's settings from the spec; its entry as the spec wants it."""
        self._settings[node] = entry = self.settings_for(node)
        self._dirty.add(node)
        return entry

    def drop(self, node: str) -> None:
        """Take the node's entry out of the table."""
        self._rotation.pop(node, None)
        self._settings.pop(node, None)
        self._dirty.add(node)

    def route(self, alias: str, entry: AliasEntry) -> None:
        self._aliases[alias] = entry
        self._aliases_dirty = True

    def unroute(self, alias: str) -> None:
        self._aliases.pop(alias, None)
        self._aliases_dirty = True

    def settings_for(self, node: str) -> NodeEntry:
        """The node's entry as the spec wants it (endpoints aside)."""
        want = self.desired.nodes.get(node)
        if want is not None:
            return NodeEntry(
                (),
                want.min_healthy,
                want.health,
                timeouts=want.timeouts,
                suspended=want.suspended,
                access=want.access,
                telemetry_path=want.telemetry_path,
                prefix_rewrite=want.prefix_rewrite,
            )
        return self._settings.get(node, NodeEntry((), 1, HealthSettings()))

    def write(self, path_table: StateDir) -> int:
        """Stage and write the table at once (with `lock` held: the changes that come
        meanwhile wait for it)."""
        generation = self.stage()
        self.flush(path_table, generation)
        return generation

    def stage(self) -> int:
        """The table as it is now, as the next generation to write; its generation. Called
        with `lock` held."""
        self.generation += 1
        staged = self.staged
        nodes = staged.nodes if staged is not None and not self._dirty else self._stage_nodes()
        if self._aliases_dirty:
            self._staged_aliases = MappingProxyType(dict(sorted(self._aliases.items())))
            self._aliases_dirty = False
        self.staged = RoutingTable(self.generation, nodes, self._staged_aliases)
        return self.generation

    def _stage_nodes(self) -> Mapping[str, NodeEntry]:
        """Rebuild the entries of the nodes changed since the last stage; all entries."""
        entries = self._entries
        added = False
        leaving: list[str] = []
        for node in self._dirty:
            endpoints = self._rotation.get(node)
            before = self._listed.pop(node, frozenset())
            now: frozenset[str] = frozenset()
            if endpoints is None:
                entries.pop(node, None)
            else:
                added = added or node not in entries
                entries[node] = replace(
                    self._settings.get(node) or self.settings_for(node),
                    endpoints=endpoints,
                    discover=self.discover.get(node),
                )
                now = self._listed[node] = frozenset(e.instance for e in endpoints)
            self._written.update(now - before)
            leaving.extend(before - now)
        # Counted out only after every changed node counted its own in: an instance that
        # moved between two of them never left the table.
        for instance in leaving:
            self._written[instance] -= 1
            if self._written[instance] <= 0:
                del self._written[instance]
                self.removed_at[instance] = self.generation
        self._dirty.clear()
        if added:  # in name order, as tables always were; only a new node moves any
            self._entries = entries = dict(sorted(entries.items()))
        # A copy (at C speed): the staged table stays a value while the entries change.
        return MappingProxyType(dict(entries))

    def flush(self, path_table: StateDir, generation: int) -> None:
        """Return once a table of at least this generation is written and handed on; write
        the newest staged one when none is yet. Needs no `lock` (may be called with it)."""
        with self.writing:
            table = self.staged  # the newest: staged only grows, one assignment at a time
            if self.flushed >= generation or table is None:
                return
            write_table(path_table.table, table, self.encoder)
            self.fleet.publish(table)
            if self.on_publish is not None:
                self.on_publish(table)  # an embedded balancer takes it in-process, at once
            self.flushed = table.generation


def _reports(late: list[BalancerAck], what: Callable[[BalancerAck], str]) -> str:
    """Each late balancer and what it last reported, for the failed step's message."""
    return "; ".join(f"balancer {ack.describe()} {what(ack)}" for ack in late)


def _names(names: set[str] | frozenset[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def _endpoint(instance: LiveInstance) -> Endpoint:
    return Endpoint(
        instance.name,
        instance.host,
        instance.port or 0,
        instance.telemetry_port,
        instance.socket,
    )


def _in_flight(what: str, key: str, late: list[BalancerAck]) -> str:
    """A drain's progress line: the requests still in flight on key, over the balancers."""
    requests = sum(ack.draining.get(key, 0) for ack in late)
    return f"draining {what}: {requests} requests in flight, {len(late)} balancer(s) to finish"


def discovered_key(instance: LiveInstance) -> str:
    """The name a balancer gives an instance it found by DNS: its address (balancer/discovery)."""
    return f"{instance.host}:{instance.port}"


class Applier:
    """Carries out one plan."""

    def __init__(
        self,
        plan: Plan,
        desired: DesiredState,
        live: LiveState,
        runtime: Runtime,
        state: StateDir,
        options: ApplyOptions | None = None,
        on_result: Callable[[StepResult], None] | None = None,
        on_publish: Callable[[RoutingTable], None] | None = None,
        on_start: Callable[[PlanStep], None] | None = None,
    ) -> None:
        self.plan = plan
        self.on_start = on_start  # told as each step starts, before it does anything
        self.desired = desired
        self.runtime = runtime
        self.state = state
        self.options = options or ApplyOptions()
        self.clock = self.options.clock
        self.on_result = on_result
        self.project = plan.project
        self.created: dict[tuple[str, int], LiveInstance] = {}  # created or started again
        self.restarted: set[str] = set()  # instances a resume started (rather than created)
        self.known = {i.name: i for i in live.instances}  # every instance seen, by name
        self.ownership = live.ownership
        self.fleet = runtime.balancers(plan.project, state)
        discover = {
            name: found
            for name, node in desired.nodes.items()
            if (found := runtime.discovery(plan.project, name, node.config.port))
        }
        # Instances found but never published (an apply stopped early): each one's wait step
        # publishes it, and nothing before that does.
        self.adopting = frozenset(
            step.instance
            for step in plan.step_by_id.values()
            if step.step is Step.WAIT and step.instance
        )
        self.published = _Published(live, desired, self.fleet, discover, on_publish, self.adopting)
        self.retiring: dict[str, str] = {}  # a retired instance -> the one the runtime retired
        self.prepared: set[str] = set()
        self.preparing = threading.Lock()
        self.engine_calls = threading.BoundedSemaphore(max(1, self.options.parallelism))
        # One step at a time stays one (a serial apply, in order); otherwise waits overlap.
        self.in_flight = (
            1 if self.options.parallelism <= 1 else self.options.parallelism * STEPS_PER_ENGINE_CALL
        )

    def run(self) -> ApplyReport:
        """Walk the DAG; never raises for a failed step, which the report carries instead."""
        graph = self.plan.graph
        waiting = {step_id: graph.in_degree(step_id) for step_id in graph}
        order = {step.id: position for position, step in enumerate(self.plan.steps())}
        # Steps whose dependencies are done, first in plan order: a heap, as hundreds may be
        # ready at once and one ends at a time.
        ready = [(order[s], s) for s, n in waiting.items() if n == 0]
        heapq.heapify(ready)
        results: list[StepResult] = []
        running: dict[Future[StepResult], str] = {}
        failed = False
        with ThreadPoolExecutor(max_workers=self.in_flight) as pool:
            while ready or running:
                while ready and not failed and len(running) < self.in_flight:
                    step_id = heapq.heappop(ready)[1]
                    step = self.plan.step_by_id[step_id]
                    running[pool.submit(self._run_step, step)] = step_id
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=lambda f: order[running[f]]):
                    step_id = running.pop(future)
                    result = future.result()
                    self._record(results, result)
                    if result.outcome is Outcome.FAILED:
                        failed = True
                        continue
                    for successor in graph.successors(step_id):
                        waiting[successor] -= 1
                        if waiting[successor] == 0:
                            heapq.heappush(ready, (order[successor], successor))
        ended = {r.step.id: r for r in results}
        failures = [r.step.id for r in results if r.outcome is Outcome.FAILED]
        blocked: dict[str, str] = {}  # a step -> the failed step upstream of it
        for step in self.plan.steps():
            if step.id in ended:
                continue
            upstream = None
            for before in graph.predecessors(step.id):
                done = ended.get(before)
                if done is not None and done.outcome is Outcome.FAILED:
                    upstream = before
                elif before in blocked:
                    upstream = blocked[before]
                if upstream is not None:
                    break
            if upstream is not None:
                blocked[step.id] = upstream
                reason = f"upstream failed: {upstream}"
            elif failures:
                reason = f"the apply stopped when {failures[0]} failed"
            else:
                reason = "its dependencies did not finish"
            self._record(results, StepResult(step, Outcome.NOT_STARTED, reason, 0.0))
        results.sort(key=lambda r: order[r.step.id])
        return ApplyReport(tuple(results))

    def _record(self, results: list[StepResult], result: StepResult) -> None:
        results.append(result)
        if self.on_result is not None:
            self.on_result(result)

    def _run_step(self, step: PlanStep) -> StepResult:
        started = self.clock.monotonic()
        if self.on_start is not None:
            self.on_start(step)
        try:
            if step.node is not None:
                self._prepare(step.node)
            detail = self._execute(step)
            outcome = Outcome.DONE
        except GitopsNodesError as exc:
            detail, outcome = str(exc), Outcome.FAILED
        except Exception:  # a bug: keep the traceback in the report rather than lose it
            detail, outcome = "internal error:\n" + traceback.format_exc(), Outcome.FAILED
        return StepResult(step, outcome, detail, self.clock.monotonic() - started)

    def _prepare(self, node: str) -> None:
        """The runtime's per-node preparation, once per apply, before the node's first step
        (its steps may run in parallel: the first one prepares, the others wait for it)."""
        with self.preparing:
            if node in self.prepared:
                return
            self._engine(
                self.runtime.prepare_node,
                self.project,
                node,
                self.desired.nodes.get(node),
                self.ownership,
            )
            self.prepared.add(node)

    def _engine(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """call (the runtime's, reaching the engine) once one of `parallelism` slots is free."""
        with self.engine_calls:
            return call(*args, **kwargs)

    def _discovered(self, node: str) -> bool:
        return node in self.published.discover

    def _key(self, instance: LiveInstance) -> str:
        """How balancers name instance in their reports."""
        return discovered_key(instance) if self._discovered(instance.node) else instance.name

    def _execute(self, step: PlanStep) -> str:
        if step.step is Step.BUILD:
            return self._build(step)
        if step.step is Step.CREATE:
            return self._create(step)
        if step.step is Step.START:
            return self._start(step)
        if step.step is Step.WAIT:
            return self._wait(step)
        if step.step is Step.PUBLISH:
            return self._publish(step)
        if step.step is Step.DRAIN:
            if self._discovered(step.node or ""):
                return self._drain_retired(step.instance or "")
            return self._drain(step.instance or "")
        if step.step is Step.STOP:  # suspended: drained and stopped, the container kept
            return self._drain(step.instance or "") + ", kept for resume"
        instance = self.retiring.get(step.instance or "", step.instance or "")
        self._check_ours(instance)
        self._engine(self.runtime.remove_instance, self.project, instance)
        if instance != step.instance:
            return f"{instance} removed (the runtime retired it in place of {step.instance})"
        return f"{step.instance} removed"

    def _await_node(self, alias: str, node: str) -> None:
        """Wait until every running balancer counts at least min(minHealthy, instances) of
        node's instances Healthy (at least one), so moving alias onto it never meets a
        balancer that does not; raise RuntimeFailure, with what each late balancer reported,
        when they do not within the node's start timeout. Called with the table lock held."""
        want = self.desired.nodes[node]
        if want.suspended:
            return  # the documented exception: its aliases route around it
        instances = self._members(node)
        needed = max(1, min(want.min_healthy, want.instances))
        generation = self.published.generation
        timeout = want.health.start_timeout

        def behind(ack: BalancerAck) -> bool:
            return ack.generation < generation or len(instances & ack.healthy) < needed

        def said(ack: BalancerAck) -> str:
            if ack.generation < generation:
                return f"serves table generation {ack.generation}, not yet {generation}"
            counted = instances & ack.healthy
            return (
                f"counts {len(counted)} of {node}'s {len(instances)} instances in rotation "
                f"Healthy ({_names(counted)}), needs {needed}"
            )

        late = self._await_acks(behind, 0.0 if len(instances) < needed else timeout)
        if late:
            raise RuntimeFailure(
                f"alias {alias} stays where it was: node {node} is not counted Healthy by every "
                f"running balancer within {timeout:g}s (healthCheck.startTimeout): "
                + _reports(late, said)
            )

    def _members(self, node: str) -> set[str]:
        """The node's instances as balancers name them: the table's, or for a discovered node
        the alive ones this apply saw or started."""
        if not self._discovered(node):
            return {e.instance for e in self.published.rotation.get(node, ())}
        alive = [i for i in self.known.values() if i.node == node and i.alive]
        alive += [i for (name, _), i in self.created.items() if name == node]
        return {discovered_key(i) for i in alive}

    def _await_balancers(self, instance: str, generation: int, node: str) -> list[BalancerAck]:
        """Wait (within the node's start timeout) until every running balancer serves
        generation and counts instance Healthy; the balancers still behind then."""
        return self._await_acks(
            lambda ack: ack.generation < generation or instance not in ack.healthy,
            self.desired.nodes[node].health.start_timeout,
        )

    def _not_counted(
        self, instance: str, generation: int, node: str, late: list[BalancerAck]
    ) -> RuntimeFailure:
        """The failure of a publish whose instance the balancers did not count Healthy."""

        def said(ack: BalancerAck) -> str:
            if ack.generation < generation:
                return f"serves table generation {ack.generation}, not yet {generation}"
            return f"does not count it Healthy (counts {_names(ack.healthy)})"

        timeout = self.desired.nodes[node].health.start_timeout
        return RuntimeFailure(
            f"{instance} is not counted Healthy by every running balancer within {timeout:g}s "
            f"(healthCheck.startTimeout): " + _reports(late, said)
        )

    def _check_leaving(self, node: str, instance: str) -> None:
        """Refuse to take instance out of rotation (no replacement takes its place) when a
        balancer would then count fewer of the node's instances Healthy than
        min(minHealthy, what it counts now), or none while an alias routes to the node: a
        scale-down must not keep only the sick ones."""
        want = self.desired.nodes.get(node)
        current = {e.instance for e in self.published.rotation.get(node, ())}
        if want is None or instance not in current:
            return
        rest = current - {instance}
        routed = any(
            n == node and weight > 0
            for entry in self.published.aliases.values()
            for n, weight in entry.targets
        )
        minimum = max(want.min_healthy, 1 if routed else 0)

        def short(ack: BalancerAck) -> bool:
            return len(rest & ack.healthy) < min(minimum, len(current & ack.healthy))

        late = [ack for ack in self.fleet.acks() if short(ack)]
        if late:
            raise RuntimeFailure(
                f"{instance} stays in rotation: without it node {node} would have fewer "
                f"instances counted Healthy than {minimum} (its minHealthy, at least one "
                f"while an alias routes to it): "
                + _reports(
                    late,
                    lambda ack: (
                        f"counts {_names(current & ack.healthy)} Healthy, "
                        f"{_names(rest & ack.healthy)} without it"
                    ),
                )
            )

    def _drain(self, instance: str) -> str:
        """Wait until every running balancer serves a table without instance and has finished
        its requests on it, then stop it. Make before break: this is the 'break'."""
        # An instance no table of this apply took out was in none since the one published
        # before it: balancers serving that one or later have no requests on it.
        needed = self.published.removed_at.get(instance, self.published.started_at)
        behind = self._await_acks(
            lambda ack: ack.generation < needed or ack.draining.get(instance, 0) > 0,
            self.options.drain_timeout,
            lambda late: _in_flight(instance, instance, late),
        )
        self._check_ours(instance)
        self._engine(self.runtime.stop_instance, self.project, instance, self.options.stop_grace)
        if behind:
            return (
                f"{instance} stopped after {self.options.drain_timeout:g}s with balancers "
                f"{', '.join(a.describe() for a in behind)} still using it"
            )
        return f"{instance} drained and stopped"

    def _drain_retired(self, instance: str) -> str:
        """For a discovered node: the runtime retires the instance (or the one it picks in its
        place), and balancers drop it when its DNS name stops answering with it; wait until
        every balancer has finished its requests on it. Break, after the runtime's make."""
        self._check_ours(instance)
        retired = self._engine(
            self.runtime.stop_instance, self.project, instance, self.options.stop_grace
        )
        self.retiring[instance] = retired
        current = self._engine(self.runtime.inspect_instance, self.project, retired)
        if current is not None and current.alive:
            return f"{retired} stays: the runtime retired no instance in its place"
        found = current or self.known.get(retired)
        what = retired if retired == instance else f"{retired} (retired in place of {instance})"
        if found is None or found.port is None:
            return f"{what} stopped"
        key = discovered_key(found)
        behind = self._await_acks(
            lambda ack: key in ack.healthy or ack.draining.get(key, 0) > 0,
            self.options.drain_timeout,
            lambda late: _in_flight(what, key, late),
        )
        if behind:
            using = ", ".join(a.describe() for a in behind)
            return f"{what} stopping with balancers {using} still using it"
        return f"{what} drained and stopping"

    def _check_ours(self, name: str) -> None:
        """Re-read the instance's owner just before stopping or removing it: what carries that
        name now may not be what the plan saw, and another state directory's is never touched."""
        current = self._engine(self.runtime.inspect_instance, self.project, name)
        if current is not None and not self.ownership.owns(current):
            raise RuntimeFailure(f"{name} is {OTHER_OWNER}: left as it is")

    def _await_acks(
        self,
        behind: Callable[[BalancerAck], bool],
        timeout: float,
        say: Callable[[list[BalancerAck]], str] | None = None,
    ) -> list[BalancerAck]:
        """Poll the running balancers' reports until none is behind, or timeout passes;
        the ones still behind then. say tells a live display what is awaited."""
        deadline = self.clock.monotonic() + timeout
        while True:
            late = [ack for ack in self.fleet.acks() if behind(ack)]
            if not late or self.clock.monotonic() >= deadline:
                return late
            if say is not None:
                progress.note(say(late))
            self.clock.sleep(DRAIN_POLL)  # polling the balancers' reports against a deadline

    def _build(self, step: PlanStep) -> str:
        request = next(
            n.build for n in self.desired.nodes.values() if n.build and n.build.tag == step.image
        )
        assert request is not None
        self._engine(self.runtime.build_image, self.project, self.desired.root, request)
        return f"built {request.tag} from {request.context}"

    def _create(self, step: PlanStep) -> str:
        node = self.desired.nodes[step.node or ""]
        instance = self._engine(
            self.runtime.create_instance,
            self.project,
            node,
            step.instance_index or 0,
            self.ownership,
        )
        self.created[(node.name, step.instance_index or 0)] = instance
        return f"{instance.name} started, published on {instance.host}:{instance.port}"

    def _start(self, step: PlanStep) -> str:
        instance = self._engine(self.runtime.start_instance, self.project, step.instance or "")
        self.created[(step.node or "", step.instance_index or 0)] = instance
        self.restarted.add(instance.name)
        return f"{instance.name} started again, published on {instance.host}:{instance.port}"

    def _wait(self, step: PlanStep) -> str:
        node = self.desired.nodes[step.node or ""]
        key = (node.name, step.instance_index or 0)
        if step.instance and key not in self.created:
            # Adopted: it exists, but nobody ever saw it Healthy.
            found = self._engine(self.runtime.inspect_instance, self.project, step.instance)
            if found is None:
                raise RuntimeFailure(f"{step.instance} is gone: it cannot be adopted")
            self.created[key] = found
        instance = self.created[key]
        health = node.health
        try:
            return self._wait_healthy(instance, health)
        except RuntimeFailure:
            # It never took traffic: removing it (stopping it again, when a resume started
            # it) keeps the node as it was before this apply.
            if instance.name in self.restarted:
                self._engine(
                    self.runtime.stop_instance,
                    self.project,
                    instance.name,
                    self.options.stop_grace,
                )
            else:
                self._engine(self.runtime.remove_instance, self.project, instance.name)
            raise

    def _wait_healthy(self, instance: LiveInstance, health: HealthSettings) -> str:
        if instance.port is None:
            raise RuntimeFailure(f"{instance.name} has no port published on {instance.host}")
        check = replace(health, timeout=min(health.timeout, health.start_timeout))
        deadline = self.clock.monotonic() + health.start_timeout
        passed = 0
        last = "no check ran"
        # A listed instance is probed at the port it was made with, and the engine is asked
        # for its state (has it exited?) only while its probes fail, at most every
        # INSPECT_POLL. A discovered one's probe reads its state (the task's), so that is
        # read before every probe.
        listed = not self._discovered(instance.node)
        current: LiveInstance | None = instance
        failing = not listed
        inspect_after = self.clock.monotonic()
        while True:
            if failing and self.clock.monotonic() >= inspect_after:
                current = self._engine(self.runtime.inspect_instance, self.project, instance.name)
                inspect_after = self.clock.monotonic() + (INSPECT_POLL if listed else 0.0)
            if current is None or current.state in ("exited", "dead", "restarting"):
                state = current.state if current else "removed"
                raise RuntimeFailure(
                    f"{instance.name} stopped ({state}) before it became Healthy"
                    + self._logs_hint(instance.name)
                )
            found = self.runtime.probe_instance(current, check)
            failing = failing or not found.healthy
            last = found.detail
            passed = passed + 1 if found.healthy else 0
            progress.note(
                f"{instance.name} {current.state}, not Healthy yet ({passed}/"
                f"{health.healthy_threshold} checks passed): {last}"
            )
            if passed >= health.healthy_threshold:
                return f"{instance.name} is Healthy ({last})"
            if self.clock.monotonic() >= deadline:
                raise RuntimeFailure(
                    f"{instance.name} did not become Healthy within {health.start_timeout:g}s: "
                    f"{last}" + self._logs_hint(instance.name)
                )
            self.clock.sleep(min(HEALTH_POLL, health.interval))  # the next probe, not a sync point

    def _logs_hint(self, name: str) -> str:
        logs = self._engine(self.runtime.instance_logs, name, 8).strip()
        return "\n    last log lines:\n    " + logs.replace("\n", "\n    ") if logs else ""

    def _publish(self, step: PlanStep) -> str:
        table = self.published
        if (
            step.alias is None
            and step.node is not None
            and step.instance_index is not None
            and step.instance
            and not self._discovered(step.node)
        ):
            return self._publish_replacing(step.node, step.instance_index, step.instance)
        with table.lock:
            if step.alias is not None:
                alias = self.desired.aliases.get(step.alias)
                if alias is None:
                    table.unroute(step.alias)
                    what = f"alias {step.alias} dropped"
                else:
                    before = table.aliases.get(step.alias)
                    for node in gaining(before.targets if before else (), alias.routes):
                        self._await_node(step.alias, node)
                    table.route(
                        step.alias,
                        AliasEntry(
                            alias.routes, alias.affinity_header, alias.access, alias.prefix_rewrite
                        ),
                    )
                    what = f"alias {step.alias} routes to " + ", ".join(
                        f"{n}={w}" for n, w in alias.routes
                    )
            elif step.node is not None and step.instance_index is not None:
                new = self.created[(step.node, step.instance_index)]
                table.configure(step.node)
                if self._discovered(step.node):
                    # Balancers find it by DNS (it answers there once Healthy): wait until
                    # every one counts it Healthy; the runtime retires what it replaces.
                    table.include(step.node)
                    generation = table.write(self.state)
                    late = self._await_balancers(self._key(new), generation, step.node)
                    if late:
                        raise self._not_counted(new.name, generation, step.node, late)
                    return f"{new.name} found by the balancers (table generation {generation})"
                rotation = [e for e in table.rotation.get(step.node, ()) if e.instance != new.name]
                table.rotate(step.node, [*rotation, _endpoint(new)])
                what = f"{new.name} in rotation"
            elif step.node is not None and step.instance is not None:
                self._check_leaving(step.node, step.instance)
                table.rotate(
                    step.node,
                    [e for e in table.rotation.get(step.node, ()) if e.instance != step.instance],
                )
                what = f"{step.instance} out of rotation"
            elif step.node is not None and step.node in self.desired.nodes:
                entry = table.configure(step.node)
                if entry.suspended:  # out of rotation: its aliases route around it
                    table.rotate(step.node, ())
                    what = f"node {step.node} suspended, its instances out of rotation"
                else:
                    table.include(step.node)
                    what = f"node {step.node} settings"
            else:
                table.drop(step.node or "")
                what = f"node {step.node} dropped"
            generation = table.stage()
        table.flush(self.state, generation)  # outside the lock: others' changes join it
        return f"{what} (table generation {generation})"

    def _publish_replacing(self, node: str, index: int, old: str) -> str:
        """Put the new instance at index in rotation in place of old, make before break at
        the balancers too: old leaves only once every balancer has seen the new one pass a
        check. The table's lock is not held while the balancers are awaited, so the other
        nodes' publishes go on meanwhile; every change is by instance name, so theirs and
        this one's never undo each other."""
        table = self.published
        new = self.created[(node, index)]

        def without(name: str) -> list[Endpoint]:
            return [e for e in table.rotation.get(node, ()) if e.instance != name]

        with table.lock:
            table.configure(node)
            table.rotate(node, [*without(new.name), _endpoint(new)])
            generation = table.stage()
        table.flush(self.state, generation)
        late = self._await_balancers(new.name, generation, node)
        with table.lock:
            if late:
                # Traffic stays where it was: the new one out again, the old one in.
                table.rotate(node, without(new.name))
            else:
                table.rotate(node, without(old))
            final = table.stage()
        table.flush(self.state, final)
        if late:
            raise self._not_counted(new.name, generation, node, late)
        return f"{new.name} in rotation, {old} out (table generation {final})"
