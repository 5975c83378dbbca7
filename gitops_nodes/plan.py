"""Changes -> an immutable plan: a DAG of typed steps that apply walks. Pure.

Ordering is the safety story, so it lives here, where tests can read it without Docker:
- make before break: an instance is created and Healthy before it is published, and an old
  one is unpublished and drained before it is removed;
- a node's serving instances are replaced in batches of at most its `maintenanceLimit` (1 by
  default): every new instance of a batch is Healthy and published before the one it replaces
  is drained and removed, and the next batch starts once the whole batch is done. So a node
  never serves with fewer instances than it had (never below `minHealthy`, when it met it):
  the limit bounds the extra containers (at most instances + limit exist at once) and how many
  instances lose their in-memory state at once, never the capacity that serves. Instances
  that do not serve (exited, dead) are replaced at once: taking them out costs nothing;
- an alias that gains a node is published only after that node's instances are published;
- an alias that drops a node is published before that node is unpublished and removed;
- suspending a node publishes it without instances first (its aliases route around it), then
  drains and stops each instance, keeping the containers; resuming starts them all at once
  (none serves, so there is nothing to keep up) and publishes each as it becomes Healthy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType
from typing import Any, NamedTuple

from gitops_nodes.diff import (
    Action,
    AliasChange,
    Diff,
    InstanceChange,
    NodeChange,
    Sensitive,
    diff,
)
from gitops_nodes.gcpause import gc_paused
from gitops_nodes.live import LiveInstance, LiveState
from gitops_nodes.render import SENSITIVE_TEXT
from gitops_nodes.rollout import gaining
from gitops_nodes.spec.state import DesiredState

PLAN_FORMAT = "gitops-nodes/plan/v1"


class Step(StrEnum):
    """The kinds of step a plan is made of, in the order a node's life passes through them."""

    BUILD = "build"
    CREATE = "create"
    START = "start"  # a stopped instance, when its node resumes
    WAIT = "wait"
    PUBLISH = "publish"
    DRAIN = "drain"
    STOP = "stop"  # drain, then stop and keep, when its node is suspended
    REMOVE = "remove"


_STEP_KEYS = (
    ("node", "node"),
    ("index", "instance_index"),
    ("instance", "instance"),
    ("alias", "alias"),
    ("image", "image"),
    ("batch", "batch"),
)


class PlanStep(NamedTuple):
    """One step of a plan. Which fields are set says what it acts on.

    wait with node, instance_index and instance: wait for an instance that exists but was
    never published (adopted from an apply that stopped early), as for a new one;
    publish with alias: route the alias as the spec says (or drop it);
    publish with node and instance_index: put the instance created at index in rotation, taking
    `instance` (the one it replaces, if any) out; publish with node and instance only: take
    that instance out of rotation; publish with node alone: publish the node's settings (with
    no instances when it is suspended), or drop the node when the spec no longer has it.
    `batch` numbers (from 1) the maintenance batch a replacement's steps belong to.

    A named tuple rather than a frozen dataclass: plans of tens of thousands of steps are
    built on every reconcile, and a tuple is several times cheaper to make.
    """

    id: str
    step: Step
    node: str | None = None
    instance_index: int | None = None
    instance: str | None = None
    alias: str | None = None
    image: str | None = None
    batch: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "step": self.step.value}
        for key, attr in _STEP_KEYS:
            value = getattr(self, attr)
            if value is not None:
                data[key] = value
        return data


@dataclass(frozen=True)
class Plan:
    """What apply will do, why, and the states it was computed from."""

    project: str
    diff: Diff
    step_by_id: Mapping[str, PlanStep]
    spec_digest: str
    live_digest: str
    # The project's containers another state directory owns: the plan never touches them.
    left_alone: tuple[LiveInstance, ...] = ()
    edges: tuple[tuple[str, str], ...] = ()  # (before, after) step ids
    # What each node's model sources resolved to, and version warnings (DesiredNode's).
    sources: tuple[dict[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()

    @cached_property
    def graph(self) -> Any:
        """The steps as a frozen networkx.DiGraph of step ids; an edge means "after". Made
        when first asked for (make_plan asks when there are steps): a plan with nothing to do
        never imports networkx, which is a good part of a no-op `plan`'s start-up."""
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(self.step_by_id)
        graph.add_edges_from(self.edges)
        return nx.freeze(graph)

    @property
    def empty(self) -> bool:
        return self.diff.empty

    def steps(self) -> list[PlanStep]:
        """Every step in a deterministic order that respects the dependencies."""
        by_id = self.step_by_id
        if not by_id:
            return []
        import networkx as nx

        order = nx.lexicographical_topological_sort(
            self.graph, key=lambda step_id: (_STEP_ORDER[by_id[step_id].step], step_id)
        )
        return [by_id[step_id] for step_id in order]

    def dependencies(self, step_id: str) -> list[str]:
        return sorted(self.graph.predecessors(step_id))

    def summary(self) -> tuple[int, int, int]:
        """(to add, to change, to destroy), counting a replacement as an add and a destroy."""
        add = change = destroy = 0
        changes: Iterable[NodeChange | AliasChange] = (*self.diff.nodes, *self.diff.aliases)
        for item in changes:
            if item.action is Action.CREATE:
                add += 1
            elif item.action is Action.UPDATE:
                change += 1
            elif item.action is Action.DELETE:
                destroy += 1
            else:
                add += 1
                destroy += 1
        return add, change, destroy

    def to_json(self) -> dict[str, Any]:
        """The plan as `plan --json` prints it and `plan -out` saves it."""
        add, change, destroy = self.summary()
        return {
            "format": PLAN_FORMAT,
            "project": self.project,
            "specDigest": self.spec_digest,
            "liveDigest": self.live_digest,
            "changes": [_node_json(c) for c in self.diff.nodes]
            + [_alias_json(c) for c in self.diff.aliases],
            "steps": [
                {**step.to_json(), "after": self.dependencies(step.id)} for step in self.steps()
            ],
            "summary": {"add": add, "change": change, "destroy": destroy},
            "leftAlone": [_left_alone_json(i) for i in self.left_alone],
            "sources": list(self.sources),
            "warnings": list(self.warnings),
        }


OTHER_OWNER = "owned by another state directory; --adopt to take it over"


def _left_alone_json(instance: LiveInstance) -> dict[str, Any]:
    owner = f"owner {instance.owner}" if instance.owner else "no owner label"
    return {
        "instance": instance.name,
        "node": instance.node,
        "index": instance.index,
        "owner": instance.owner,
        "reason": f"{OTHER_OWNER} ({owner})",
    }


def make_plan(project: str, desired: DesiredState, live: LiveState) -> Plan:
    """Diff the spec against the live state and order the work into a DAG."""
    with gc_paused():
        changes = diff(desired, live)
        builder = _Builder(changes)
        builder.build()
        plan = Plan(
            project,
            changes,
            MappingProxyType(builder.steps),
            desired.digest(),
            live.digest([n.build.tag for n in desired.nodes.values() if n.build is not None]),
            live.foreign,
            tuple(builder.edges),
            tuple(
                {
                    "node": n.name,
                    "field": v.field,
                    "source": v.source,
                    "resolved": v.resolved,
                    "fetched": v.fetched,
                }
                for n in desired.nodes.values()
                for v in n.sources
            ),
            tuple(w for n in desired.nodes.values() for w in n.warnings),
        )
        if builder.steps:
            _ = plan.graph  # built here, where planning's cost is measured
        return plan


class _Builder:
    def __init__(self, changes: Diff) -> None:
        self.changes = changes
        # Collected first and added to the graph in bulk: per-call networkx costs dominate at
        # tens of thousands of steps.
        self.steps: dict[str, PlanStep] = {}
        self.edges: list[tuple[str, str]] = []
        self.node_published: dict[str, list[str]] = {}  # node -> steps publishing its instances
        self.node_unpublish: dict[str, str] = {}  # deleted node -> the step dropping it
        self.node_takeouts: dict[str, list[str]] = {}  # node -> steps taking instances out

    def add(self, step: PlanStep, *after: str | None) -> str:
        self.steps.setdefault(step.id, step)
        self.edges.extend((before, step.id) for before in after if before is not None)
        return step.id

    def build(self) -> None:
        for change in self.changes.nodes:
            self._node(change)
        for alias in self.changes.aliases:
            self._alias(alias)

    def _node(self, change: NodeChange) -> None:
        name = change.name
        if change.action is Action.DELETE:
            drop = self.add(PlanStep(f"publish node {name} (drop)", Step.PUBLISH, node=name))
            self.node_unpublish[name] = drop
            for instance in change.instances:
                self._retire(name, instance.old or "", drop, None)
            return
        published: list[str] = []
        self.node_published[name] = published
        if change.after.get("suspended") and change.instances:
            # Out of every balancer's rotation first, then each instance drained and stopped
            # (kept for resume) or, when it is not worth keeping, removed.
            out = self.add(PlanStep(f"publish node {name} (suspended)", Step.PUBLISH, node=name))
            for instance in change.instances:
                old = instance.old or ""
                if instance.action is Action.SUSPEND:
                    self.add(PlanStep(f"stop {old}", Step.STOP, node=name, instance=old), out)
                else:
                    self._retire(name, old, out, None)
            return
        build = None
        if change.build is not None:
            tag = change.build.tag
            build = self.add(PlanStep(f"build {tag}", Step.BUILD, image=tag))
        adopted = {i.index for i in change.instances if i.action is Action.ADOPT}
        # An adopted instance kept at an index where a second, serving one is removed takes
        # its place make-before-break, as a replacement does.
        replaced: dict[int, str] = {}
        for instance in change.instances:
            if (
                instance.action is Action.DELETE
                and instance.in_service
                and instance.index in adopted
                and instance.index not in replaced
            ):
                replaced[instance.index] = instance.old or ""
        adopt_published: dict[int, str] = {}
        for instance in change.instances:
            if instance.action is Action.ADOPT:
                put = self._adopt(
                    name, instance.index, instance.old or "", replaced.get(instance.index)
                )
                adopt_published[instance.index] = put
                published.append(put)
            elif (
                instance.action is Action.DELETE
                and replaced.get(instance.index) == instance.old
                and instance.index in adopt_published
            ):
                self._retire(name, instance.old or "", adopt_published[instance.index], None)
            elif instance.action is Action.CREATE:
                published.append(self._bring_up(name, instance.index, None, None, build))
            elif instance.action is Action.RESUME:
                published.append(self._start(name, instance.index, instance.old or ""))
            elif instance.action is Action.REPLACE and not instance.in_service:
                put = self._bring_up(name, instance.index, instance.old, None, build)
                published.append(put)
                self._retire(name, instance.old or "", put, None)
            elif instance.action is Action.DELETE:
                old = instance.old or ""
                out = self.add(
                    PlanStep(f"publish {name} without {old}", Step.PUBLISH, node=name, instance=old)
                )
                self.node_takeouts.setdefault(name, []).append(out)
                self._retire(name, old, out, None)
        previous: list[str] = []  # the removes of the batch before: the next one waits for all
        for number, batch in enumerate(maintenance_batches(change), start=1):
            removes = []
            for instance in batch:
                old = instance.old or ""
                put = self._bring_up(name, instance.index, old, number, build, *previous)
                published.append(put)
                removes.append(self._retire(name, old, put, number))
            previous = removes
        if change.publish_settings and not published:
            # (An alias gaining the node, a suspended one say, then waits for its entry.)
            published.append(self.add(PlanStep(f"publish node {name}", Step.PUBLISH, node=name)))

    def _bring_up(
        self, node: str, index: int, old: str | None, batch: int | None, *after: str | None
    ) -> str:
        key = f"{node}/{index}"
        create = self.add(
            PlanStep(f"create {key}", Step.CREATE, node=node, instance_index=index, batch=batch),
            *after,
        )
        wait = self.add(
            PlanStep(f"wait {key}", Step.WAIT, node=node, instance_index=index, batch=batch),
            create,
        )
        label = f"publish {key}" + (f" replacing {old}" if old else "")
        step = PlanStep(
            label, Step.PUBLISH, node=node, instance_index=index, instance=old, batch=batch
        )
        return self.add(step, wait)

    def _adopt(self, node: str, index: int, instance: str, replacing: str | None) -> str:
        key = f"{node}/{index}"
        wait = self.add(
            PlanStep(f"wait {key}", Step.WAIT, node=node, instance_index=index, instance=instance)
        )
        label = f"publish {key}" + (f" replacing {replacing}" if replacing else "")
        step = PlanStep(label, Step.PUBLISH, node=node, instance_index=index, instance=replacing)
        return self.add(step, wait)

    def _start(self, node: str, index: int, instance: str) -> str:
        key = f"{node}/{index}"
        start = self.add(
            PlanStep(f"start {key}", Step.START, node=node, instance_index=index, instance=instance)
        )
        wait = self.add(PlanStep(f"wait {key}", Step.WAIT, node=node, instance_index=index), start)
        return self.add(
            PlanStep(f"publish {key}", Step.PUBLISH, node=node, instance_index=index), wait
        )

    def _retire(self, node: str, instance: str, after: str, batch: int | None) -> str:
        drain = self.add(
            PlanStep(f"drain {instance}", Step.DRAIN, node=node, instance=instance, batch=batch),
            after,
        )
        return self.add(
            PlanStep(f"remove {instance}", Step.REMOVE, node=node, instance=instance, batch=batch),
            drain,
        )

    def _alias(self, change: AliasChange) -> None:
        step = self.add(PlanStep(f"publish alias {change.name}", Step.PUBLISH, alias=change.name))
        # A node the alias gains (or gives a larger share) must be serving first, whatever
        # its own change: new, or an existing node whose instances are being replaced,
        # added or healed; apply then waits until the balancers count it Healthy.
        for node in gaining(change.before, change.after):
            for published in self.node_published.get(node, []):
                self.edges.append((published, step))
        kept = {node for node, weight in change.after if weight > 0}
        for node, weight in change.before:
            if node in self.node_unpublish:
                self.edges.append((step, self.node_unpublish[node]))
            if weight > 0 and node not in kept:
                # The alias leaves the node before the node loses instances: a scale-down
                # then never leaves the alias routing to what remains of it.
                self.edges.extend((step, out) for out in self.node_takeouts.get(node, ()))


_STEP_ORDER = {step: position for position, step in enumerate(Step)}


def maintenance_batches(change: NodeChange) -> list[list[InstanceChange]]:
    """The replacements of a node's serving instances, in index order, cut into batches of
    at most its maintenance limit: the unit apply replaces at once."""
    serving = [i for i in change.instances if i.action is Action.REPLACE and i.in_service]
    size = max(1, change.maintenance_limit)
    return [serving[start : start + size] for start in range(0, len(serving), size)]


def _fields_json(fields: Iterable[Any]) -> list[dict[str, Any]]:
    items = []
    for f in fields:
        item = {
            "field": f.field,
            "before": f.before,
            "after": f.after,
            "forcesReplacement": f.forces_replacement,
        }
        if isinstance(f.before, Sensitive) or isinstance(f.after, Sensitive):
            # A key or a secret: both sides masked (a literal turned secret, or back, shows
            # neither), and marked so that every renderer masks it (render.shown_value).
            item["before"] = SENSITIVE_TEXT if f.before is not None else None
            item["after"] = SENSITIVE_TEXT if f.after is not None else None
            item["sensitive"] = True
        items.append(item)
    return items


def _node_json(change: NodeChange) -> dict[str, Any]:
    batches = maintenance_batches(change)
    batch_of = {i.index: number for number, batch in enumerate(batches, 1) for i in batch}
    instances = []
    for i in change.instances:
        item: dict[str, Any] = {
            "index": i.index,
            "action": i.action.value,
            "old": i.old,
            "reason": i.reason,
        }
        if i.index in batch_of and i.in_service:
            item["batch"] = batch_of[i.index]
        instances.append(item)
    return {
        "kind": "Node",
        "name": change.name,
        "action": change.action.value,
        "reason": change.reason,
        "transition": change.transition.value if change.transition else None,
        "fields": _fields_json(change.fields),
        "instances": instances,
        "maintenance": (
            {"limit": change.maintenance_limit, "batches": [[i.index for i in b] for b in batches]}
            if batches
            else None
        ),
        "build": change.build.tag if change.build else None,
    }


def _alias_json(change: AliasChange) -> dict[str, Any]:
    return {
        "kind": "Alias",
        "name": change.name,
        "action": change.action.value,
        "reason": change.reason,
        "fields": _fields_json(change.fields),
    }
