"""Desired x live -> changes: what differs, per node, instance and alias, and why. Pure."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any

from balancer.table import AccessRule, AliasEntry, NodeEntry, Timeouts, health_to_json
from gitops_nodes.live import LOST, STARTABLE, LiveInstance, LiveState
from gitops_nodes.render import SENSITIVE_TEXT
from gitops_nodes.spec.hashing import InstanceConfig
from gitops_nodes.spec.state import BuildRequest, DesiredAlias, DesiredNode, DesiredState


class Action(StrEnum):
    """What happens to a node, instance or alias; the values are the glyphs users see."""

    CREATE = "+"
    UPDATE = "~"
    DELETE = "-"
    REPLACE = "-/+"
    # Instances only: stopped and kept while their node is suspended, started on resume.
    SUSPEND = "suspend"
    RESUME = "resume"
    # An instance of the current spec that exists but was never published (an apply stopped
    # between creating it and publishing it): waited for like a new one, then published.
    ADOPT = "adopt"


class Transition(StrEnum):
    """A node going into or out of suspension."""

    SUSPEND = "suspend"
    RESUME = "resume"


_TRANSITION_REASONS = {
    Transition.SUSPEND: "suspended: its instances stop; its image and definition are kept",
    Transition.RESUME: "resumed: its stopped instances start again",
}


@dataclass(frozen=True)
class FieldChange:
    """One field that differs; `forces_replacement` when it means new containers."""

    field: str
    before: Any
    after: Any
    forces_replacement: bool = False


@dataclass(frozen=True)
class InstanceChange:
    """A new instance at an index (+), one that replaces `old` (-/+), `old` removed (-),
    stopped and kept (suspend), started again (resume), or found unpublished (adopt)."""

    index: int
    action: Action
    old: str | None
    reason: str
    # A replacement whose old instance serves until then: plan batches these by the node's
    # maintenance limit. Replacing one that does not serve (exited, dead) takes nothing out.
    in_service: bool = False


@dataclass(frozen=True)
class NodeChange:
    """A node that differs between the spec and the live state."""

    name: str
    action: Action
    reason: str
    before: Mapping[str, Any]  # the node flattened to dotted fields, as it is and as wanted
    after: Mapping[str, Any]
    instances: tuple[InstanceChange, ...]
    build: BuildRequest | None
    publish_settings: bool  # its minimum or health check must be (re)published
    maintenance_limit: int = 1  # in-service instances replaced at once
    transition: Transition | None = None  # going into or out of suspension

    @cached_property
    def fields(self) -> tuple[FieldChange, ...]:
        """The fields that differ; made on demand, since a large plan is rarely rendered whole."""
        if self.action is Action.CREATE:
            return tuple(FieldChange(k, None, v) for k, v in sorted(self.after.items()))
        if self.action is Action.DELETE:
            return tuple(FieldChange(k, v, None) for k, v in sorted(self.before.items()))
        return _field_changes(dict(self.before), dict(self.after))


@dataclass(frozen=True)
class AliasChange:
    """An alias whose routes differ between the spec and the published table."""

    name: str
    action: Action
    reason: str
    fields: tuple[FieldChange, ...]
    before: tuple[tuple[str, int], ...]
    after: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Diff:
    """Every change, nodes then aliases, each sorted by name."""

    nodes: tuple[NodeChange, ...]
    aliases: tuple[AliasChange, ...]

    @property
    def empty(self) -> bool:
        return not self.nodes and not self.aliases


def diff(desired: DesiredState, live: LiveState) -> Diff:
    """Compare the spec with what exists; nothing here does I/O."""
    published_nodes = live.table.nodes if live.table else {}
    published_aliases = live.table.aliases if live.table else {}
    node_changes = []
    for name in sorted(set(desired.nodes) | live.node_names()):
        change = _diff_node(
            name,
            desired.nodes.get(name),
            # A lost instance is its runtime's to replace and to stop (live.LOST).
            tuple(i for i in live.by_node.get(name, ()) if i.state != LOST),
            published_nodes.get(name),
            live,
        )
        if change is not None:
            node_changes.append(change)
    alias_changes = []
    for name in sorted(set(desired.aliases) | set(published_aliases)):
        alias_change = _diff_alias(name, desired.aliases.get(name), published_aliases.get(name))
        if alias_change is not None:
            alias_changes.append(alias_change)
    return Diff(tuple(node_changes), tuple(alias_changes))


REPLACE_FIELDS = (
    "image",
    "port",
    "command",
    "env",
    "secretFiles",
    "resources",
    "telemetry.port",
    "logs",
)


class Sensitive(str):
    """A key's or a secret's place in a plan: shown as "(sensitive value)", equal only to the
    same digest.

    A plan shows that a caller's key or a node's secret changed (rotated) without showing the
    value or its digest; a str whose text is SENSITIVE_TEXT, so whatever prints it masks it,
    and plan JSON marks its field `"sensitive": true` (plan.py) for renderers to go by.
    """

    digest: str

    def __new__(cls, digest: str) -> Sensitive:
        value = super().__new__(cls, SENSITIVE_TEXT)
        value.digest = digest
        return value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sensitive) and other.digest == self.digest

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.digest)


def access_fields(access: AccessRule | None) -> dict[str, Any]:
    """A private target's access flattened to dotted fields (names, never keys)."""
    if access is None:
        return {}
    fields: dict[str, Any] = {"access.keys": [key.name for key in access.keys]}
    if access.folders:
        fields["access.folders"] = list(access.folders)
    for key in access.keys:
        fields[f"access.keys.{key.name}"] = Sensitive(key.sha256)
    return fields


def node_fields(
    config: InstanceConfig | None,
    instances: int | None,
    min_healthy: int | None,
    health: dict[str, Any] | None,
    access: AccessRule | None = None,
    timeouts: Timeouts | None = None,
    suspended: bool | None = None,
    telemetry_path: str | None = None,
    prefix_rewrite: bool = False,
) -> dict[str, Any]:
    """A node flattened to dotted fields, the way plan shows them."""
    fields: dict[str, Any] = {}
    if config is not None:
        fields["image"] = config.image
        fields["port"] = config.port
        fields["command"] = list(config.command) if config.command is not None else None
        for key, value in config.env:
            fields[f"env.{key}"] = value
        for key, digest in config.secret_env:
            fields[f"env.{key}"] = Sensitive(digest)
        for path, digest in config.secret_files:
            fields[f"secretFiles.{path}"] = Sensitive(digest)
        fields["resources.cpus"] = config.cpus
        fields["resources.memory"] = config.memory
        if config.gpus is not None:
            gpus = config.gpus
            fields["resources.gpus"] = list(gpus) if isinstance(gpus, tuple) else gpus
        if config.telemetry_port is not None:
            fields["telemetry.port"] = config.telemetry_port
        if config.logs is not None:
            fields["logs.maxSize"], fields["logs.maxFiles"] = config.logs
    if telemetry_path is not None:
        fields["telemetry.path"] = telemetry_path
    if instances is not None:
        fields["instances"] = instances
    if min_healthy is not None:
        fields["minHealthy"] = min_healthy
    for key, value in (health or {}).items():
        fields[f"healthCheck.{key}"] = value
    fields.update(access_fields(access))
    if timeouts is not None:
        fields["endpoint.timeout"] = timeouts.request
        fields["endpoint.idleTimeout"] = timeouts.idle
    if suspended is not None:
        fields["suspended"] = suspended
    if prefix_rewrite:  # shown only when on, as it is off for nearly every node
        fields["prefixRewrite"] = True
    return fields


def _field_changes(before: dict[str, Any], after: dict[str, Any]) -> tuple[FieldChange, ...]:
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old != new:
            forces = key.split(".")[0] in REPLACE_FIELDS or key in REPLACE_FIELDS
            changes.append(FieldChange(key, old, new, forces))
    return tuple(changes)


def _diff_node(
    name: str,
    want: DesiredNode | None,
    have: tuple[LiveInstance, ...],
    published: NodeEntry | None,
    live: LiveState,
) -> NodeChange | None:
    if want is not None and _unchanged(want, have, published):
        return None  # the common case at scale: skip building field lists for nothing
    live_config = _current_config(have)
    was_suspended = published is not None and published.suspended
    # A suspended node's stopped instances are still its instances.
    count = len(have) if was_suspended else sum(1 for i in have if i.alive)
    published_health = _published_health(published)
    before = node_fields(
        live_config,
        count if have or published else None,
        published.min_healthy if published else None,
        published_health,
        access=published.access if published else None,
        timeouts=published.timeouts if published else None,
        suspended=published.suspended if published else None,
        telemetry_path=published.telemetry_path if published else None,
        prefix_rewrite=published.prefix_rewrite if published else False,
    )
    if want is None:
        removals = tuple(
            InstanceChange(i.index, Action.DELETE, i.name, "its node is not in the spec")
            for i in have
        )
        return NodeChange(
            name,
            Action.DELETE,
            "not in the spec",
            before,
            {},
            removals,
            None,
            published is not None,
        )

    after = node_fields(
        want.config,
        want.instances,
        want.min_healthy,
        health_to_json(want.health),
        access=want.access,
        timeouts=want.timeouts,
        suspended=want.suspended,
        telemetry_path=want.telemetry_path,
        prefix_rewrite=want.prefix_rewrite,
    )
    if not have and published is None:
        if want.suspended:  # published for its aliases to see; instances come on resume
            return NodeChange(
                want.name,
                Action.CREATE,
                "not in the live state; suspended, so no instance starts",
                {},
                after,
                (),
                None,
                True,
                want.maintenance_limit,
            )
        creations = tuple(
            InstanceChange(i, Action.CREATE, None, "new node") for i in range(want.instances)
        )
        return NodeChange(
            want.name,
            Action.CREATE,
            "not in the live state",
            {},
            after,
            creations,
            _build_needed(want, live),
            True,
            want.maintenance_limit,
        )

    if want.suspended:
        instances = _suspended_instances(want, have)
        moved = False
    else:
        served = frozenset(e.instance for e in published.endpoints) if published else frozenset()
        instances = _diff_instances(want, have, was_suspended, _listed(published), served)
        moved = _moved(have, published)
    access_changed = published is not None and published.access != want.access
    publish_settings = published is None or not _same_settings(want, published) or moved
    if not instances and not publish_settings:
        return None
    transition = None
    if want.suspended and (not was_suspended or any(i.action is Action.SUSPEND for i in instances)):
        transition = Transition.SUSPEND
    elif was_suspended and not want.suspended:
        transition = Transition.RESUME
    spec_changed = not want.suspended and any(
        i.alive and i.spec_hash != want.spec_hash for i in have
    )
    if spec_changed:
        action, reason = Action.REPLACE, "its instances' spec changed"
    else:
        action = Action.UPDATE
        reasons = sorted(
            {i.reason for i in instances if i.action not in (Action.SUSPEND, Action.RESUME)}
            | ({"its instances' ports moved"} if moved else set())
        )
        if access_changed:
            reasons.append("its access changed")
        if transition is not None:
            reasons.insert(0, _TRANSITION_REASONS[transition])
        reason = "; ".join(reasons) or "its settings changed"
    needs_new = any(i.action in (Action.CREATE, Action.REPLACE) for i in instances)
    return NodeChange(
        want.name,
        action,
        reason,
        before,
        after,
        instances,
        _build_needed(want, live) if needs_new else None,
        publish_settings,
        want.maintenance_limit,
        transition,
    )


def _same_settings(want: DesiredNode, published: NodeEntry) -> bool:
    """Whether the table already carries what the spec says of the node beyond its instances."""
    return (
        published.min_healthy == want.min_healthy
        and published.health == want.health
        and published.timeouts == want.timeouts
        and published.suspended == want.suspended
        and published.access == want.access
        and published.telemetry_path == want.telemetry_path
        and published.prefix_rewrite == want.prefix_rewrite
    )


def _unchanged(
    want: DesiredNode, have: tuple[LiveInstance, ...], published: NodeEntry | None
) -> bool:
    if published is None or not _same_settings(want, published):
        return False
    if want.suspended:
        return not _suspended_instances(want, have)
    listed = _listed(published)
    return (
        len(have) == want.instances
        and all(
            i.index == position
            and i.alive
            and i.spec_hash == want.spec_hash
            and (listed is None or i.name in listed)
            for position, i in enumerate(have)
        )
        and not _moved(have, published)
    )


def _listed(published: NodeEntry | None) -> frozenset[str] | None:
    """The instances the table lists for a node (none when it is not published yet), or None
    when balancers find its instances themselves (a discovered node lists none)."""
    if published is None:
        return frozenset()
    if published.discover:
        return None
    return frozenset(e.instance for e in published.endpoints)


def _moved(have: tuple[LiveInstance, ...], published: NodeEntry | None) -> bool:
    """Whether an instance now listens on another port than the table says: the engine picks
    ports anew when it restarts a container (after its own restart, say)."""
    if published is None:
        return False
    ports = {e.instance: (e.port, e.telemetry_port) for e in published.endpoints}
    return any(
        i.alive
        and i.port is not None
        and i.name in ports
        and ports[i.name] != (i.port, i.telemetry_port)
        for i in have
    )


def _suspended_instances(
    want: DesiredNode, have: tuple[LiveInstance, ...]
) -> tuple[InstanceChange, ...]:
    """A suspended node keeps exactly its stopped instances of the current spec: the running
    ones are stopped and kept, the others (an older spec, beyond `instances`, not startable)
    removed; resume creates whatever is then missing. Nothing is created while suspended."""
    changes: list[InstanceChange] = []
    kept: set[int] = set()
    # Of two at one index, the stopped one (the instance suspended), else the older one: a
    # container started by hand with an instance's labels copied is neither.
    for instance in sorted(have, key=lambda i: (i.state not in STARTABLE, *_age(i))):
        index = instance.index
        if index >= want.instances:
            reason = f"scaled down to {want.instances}"
        elif instance.spec_hash != want.spec_hash:
            reason = "spec changed while suspended: created anew on resume"
        elif index in kept:
            reason = f"a second instance {index}"
        elif not (instance.alive or instance.state in STARTABLE):
            reason = f"instance {index} is {instance.state}: created anew on resume"
        else:
            kept.add(index)
            if instance.alive:
                changes.append(
                    InstanceChange(index, Action.SUSPEND, instance.name, "its node is suspended")
                )
            continue
        changes.append(InstanceChange(index, Action.DELETE, instance.name, reason))
    return tuple(changes)


def _age(instance: LiveInstance) -> tuple[float, str]:
    """Oldest first (the engine's creation or start time), then by name."""
    return (instance.started_at if instance.started_at is not None else math.inf, instance.name)


def _serving_first(instance: LiveInstance, served: frozenset[str]) -> tuple[bool, bool, float, str]:
    """The order in which instances claiming one index are preferred: the one the published
    table serves, then one with a published port, then the older. A container started by
    hand with an instance's labels copied (an impostor) is none of these, so it never wins
    over the real one."""
    return (instance.name not in served, instance.port is None, *_age(instance))


def _diff_instances(
    want: DesiredNode,
    have: tuple[LiveInstance, ...],
    resuming: bool = False,
    listed: frozenset[str] | None = None,
    served: frozenset[str] = frozenset(),
) -> tuple[InstanceChange, ...]:
    """Which instances to keep, create, replace or remove, index by index; when the node
    resumes, which stopped ones to start again rather than replace; which ones of the spec
    exist but are not in the table (listed: the names it has; None when not known), to adopt
    after the same wait as a new one. Of several instances at one index, the one the table
    serves (served: its instance names) is kept."""
    changes: list[InstanceChange] = []
    used: set[str] = set()
    kept: dict[int, str] = {}
    for index in range(want.instances):
        at_index = sorted(
            (i for i in have if i.index == index), key=lambda i: _serving_first(i, served)
        )
        keep = next((i for i in at_index if i.alive and i.spec_hash == want.spec_hash), None)
        if keep is not None:
            used.add(keep.name)
            kept[index] = keep.name
            if listed is not None and keep.name not in listed:
                changes.append(
                    InstanceChange(
                        index,
                        Action.ADOPT,
                        keep.name,
                        f"instance {index} exists but was never published: waited for first",
                    )
                )
            continue
        stopped = next(
            (i for i in at_index if i.state in STARTABLE and i.spec_hash == want.spec_hash), None
        )
        if resuming and stopped is not None:
            used.add(stopped.name)
            kept[index] = stopped.name
            changes.append(
                InstanceChange(index, Action.RESUME, stopped.name, f"instance {index} starts again")
            )
            continue
        stale = next((i for i in at_index if i.alive), None) or next(iter(at_index), None)
        if stale is None:
            changes.append(
                InstanceChange(index, Action.CREATE, None, f"instance {index} is missing")
            )
            continue
        used.add(stale.name)
        kept[index] = stale.name
        reason = "spec changed" if stale.alive else f"instance {index} is {stale.state}"
        changes.append(InstanceChange(index, Action.REPLACE, stale.name, reason, stale.alive))
    for instance in have:
        if instance.name in used:
            continue
        second = False
        if instance.index >= want.instances:
            reason = f"scaled down to {want.instances}"
        elif not instance.alive:
            reason = f"instance {instance.index} is {instance.state}"
        else:
            reason = f"a second instance {instance.index}, beside {kept[instance.index]}"
            if kept[instance.index] in served:
                reason += ", which the routing table serves"
            second = True
        # A second one that serves leaves only once the instance kept at its index does.
        changes.append(InstanceChange(instance.index, Action.DELETE, instance.name, reason, second))
    return tuple(changes)


def _current_config(have: tuple[LiveInstance, ...]) -> InstanceConfig | None:
    """The config most alive instances run (all of them, unless a rollout was interrupted)."""
    pool = [i for i in have if i.alive and i.config is not None] or [
        i for i in have if i.config is not None
    ]
    if not pool:
        return None
    counts = Counter(i.spec_hash for i in pool)
    top = counts.most_common(1)[0][0]
    return next(i.config for i in pool if i.spec_hash == top)


def _published_health(entry: NodeEntry | None) -> dict[str, Any] | None:
    return health_to_json(entry.health) if entry is not None else None


def _build_needed(want: DesiredNode, live: LiveState) -> BuildRequest | None:
    if want.build is None or want.build.tag in live.images:
        return None
    return want.build


def _routes_text(routes: tuple[tuple[str, int], ...]) -> list[str]:
    return [f"{node}={weight}" for node, weight in routes]


def _diff_alias(
    name: str, want: DesiredAlias | None, published: AliasEntry | None
) -> AliasChange | None:
    before = published.targets if published else ()
    after = want.routes if want else ()
    affinity_before = published.affinity_header if published else None
    affinity_after = want.affinity_header if want else None
    access_before = access_fields(published.access if published else None)
    access_after = access_fields(want.access if want else None)
    if want is None:
        removed = [FieldChange("nodes", _routes_text(before), None)]
        removed.extend(_field_changes(access_before, {}))
        return AliasChange(name, Action.DELETE, "not in the spec", tuple(removed), before, after)
    if published is None:
        added = [FieldChange("nodes", None, _routes_text(after))]
        added.extend(_field_changes({}, access_after))
        return AliasChange(name, Action.CREATE, "not published yet", tuple(added), before, after)
    routes_changed = before != after or affinity_before != affinity_after
    rewrite_changed = published.prefix_rewrite != want.prefix_rewrite
    if not routes_changed and not rewrite_changed and published.access == want.access:
        return None
    changed = []
    if before != after:
        changed.append(FieldChange("nodes", _routes_text(before), _routes_text(after)))
    if affinity_before != affinity_after:
        changed.append(FieldChange("sessionAffinity.header", affinity_before, affinity_after))
    if rewrite_changed:
        changed.append(FieldChange("prefixRewrite", published.prefix_rewrite, want.prefix_rewrite))
    changed.extend(_field_changes(access_before, access_after))
    if routes_changed:
        reason = "its routes changed"
    elif published.access != want.access:
        reason = "its access changed"
    else:
        reason = "its prefixRewrite changed"
    return AliasChange(name, Action.UPDATE, reason, tuple(changed), before, after)
