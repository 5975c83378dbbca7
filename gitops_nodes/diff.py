"""Desired x live -> changes: what differs, per node, instance and alias, and why. Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any

from balancer.table import AliasEntry, NodeEntry, health_to_json
from gitops_nodes.live import LiveInstance, LiveState
from gitops_nodes.spec.hashing import InstanceConfig
from gitops_nodes.spec.state import BuildRequest, DesiredAlias, DesiredNode, DesiredState


class Action(StrEnum):
    """What happens to a node, instance or alias; the values are the glyphs users see."""

    CREATE = "+"
    UPDATE = "~"
    DELETE = "-"
    REPLACE = "-/+"


@dataclass(frozen=True)
class FieldChange:
    """One field that differs; `forces_replacement` when it means new containers."""

    field: str
    before: Any
    after: Any
    forces_replacement: bool = False


@dataclass(frozen=True)
class InstanceChange:
    """A new instance at an index (+), one that replaces `old` (-/+), or `old` removed (-)."""

    index: int
    action: Action
    old: str | None
    reason: str


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
            live.by_node.get(name, ()),
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


REPLACE_FIELDS = ("image", "port", "command", "env", "resources", "telemetry.port")


def node_fields(
    config: InstanceConfig | None,
    instances: int | None,
    min_healthy: int | None,
    health: dict[str, Any] | None,
    telemetry_path: str | None = None,
) -> dict[str, Any]:
    """A node flattened to dotted fields, the way plan shows them."""
    fields: dict[str, Any] = {}
    if config is not None:
        fields["image"] = config.image
        fields["port"] = config.port
        fields["command"] = list(config.command) if config.command is not None else None
        for key, value in config.env:
            fields[f"env.{key}"] = value
        fields["resources.cpus"] = config.cpus
        fields["resources.memory"] = config.memory
        if config.telemetry_port is not None:
            fields["telemetry.port"] = config.telemetry_port
    if telemetry_path is not None:
        fields["telemetry.path"] = telemetry_path
    if instances is not None:
        fields["instances"] = instances
    if min_healthy is not None:
        fields["minHealthy"] = min_healthy
    for key, value in (health or {}).items():
        fields[f"healthCheck.{key}"] = value
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
    alive_count = sum(1 for i in have if i.alive)
    published_health = _published_health(published)
    before = node_fields(
        live_config,
        alive_count if have or published else None,
        published.min_healthy if published else None,
        published_health,
        published.telemetry_path if published else None,
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
        want.telemetry_path,
    )
    if not have and published is None:
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
        )

    instances = _diff_instances(want, have)
    moved = _moved(have, published)
    publish_settings = (
        published is None
        or published.min_healthy != want.min_healthy
        or published.health != want.health
        or published.telemetry_path != want.telemetry_path
        or moved
    )
    if not instances and not publish_settings:
        return None
    spec_changed = any(i.alive and i.spec_hash != want.spec_hash for i in have)
    if spec_changed:
        action, reason = Action.REPLACE, "its instances' spec changed"
    else:
        action = Action.UPDATE
        reasons = {i.reason for i in instances} | (
            {"its instances' ports moved"} if moved else set()
        )
        reason = "; ".join(sorted(reasons)) or "its settings changed"
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
    )


def _unchanged(
    want: DesiredNode, have: tuple[LiveInstance, ...], published: NodeEntry | None
) -> bool:
    return (
        published is not None
        and published.min_healthy == want.min_healthy
        and published.health == want.health
        and published.telemetry_path == want.telemetry_path
        and len(have) == want.instances
        and all(
            i.index == position and i.alive and i.spec_hash == want.spec_hash
            for position, i in enumerate(have)
        )
        and not _moved(have, published)
    )


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


def _diff_instances(
    want: DesiredNode, have: tuple[LiveInstance, ...]
) -> tuple[InstanceChange, ...]:
    """Which instances to keep, create, replace or remove, index by index."""
    changes: list[InstanceChange] = []
    used: set[str] = set()
    for index in range(want.instances):
        at_index = [i for i in have if i.index == index]
        keep = next((i for i in at_index if i.alive and i.spec_hash == want.spec_hash), None)
        if keep is not None:
            used.add(keep.name)
            continue
        stale = next((i for i in at_index if i.alive), None) or next(iter(at_index), None)
        if stale is None:
            changes.append(
                InstanceChange(index, Action.CREATE, None, f"instance {index} is missing")
            )
            continue
        used.add(stale.name)
        reason = "spec changed" if stale.alive else f"instance {index} is {stale.state}"
        changes.append(InstanceChange(index, Action.REPLACE, stale.name, reason))
    for instance in have:
        if instance.name in used:
            continue
        if instance.index >= want.instances:
            reason = f"scaled down to {want.instances}"
        elif not instance.alive:
            reason = f"instance {instance.index} is {instance.state}"
        else:
            reason = f"a second instance {instance.index}"
        changes.append(InstanceChange(instance.index, Action.DELETE, instance.name, reason))
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
    if want is None:
        field = FieldChange("nodes", _routes_text(before), None)
        return AliasChange(name, Action.DELETE, "not in the spec", (field,), before, after)
    if published is None:
        field = FieldChange("nodes", None, _routes_text(after))
        return AliasChange(name, Action.CREATE, "not published yet", (field,), before, after)
    if before == after and affinity_before == affinity_after:
        return None
    fields = []
    if before != after:
        fields.append(FieldChange("nodes", _routes_text(before), _routes_text(after)))
    if affinity_before != affinity_after:
        fields.append(FieldChange("sessionAffinity.header", affinity_before, affinity_after))
    return AliasChange(name, Action.UPDATE, "its routes changed", tuple(fields), before, after)
