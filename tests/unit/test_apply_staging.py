"""Apply's routing table between publishes: each stage rebuilds only the nodes changed since
the one before, and must publish exactly what rebuilding every node would.

Checked against a model that rebuilds the whole table at every stage (what apply did before
it kept the entries between stages): the table staged, the generation that took each
instance out (drains wait for it), and the file written, byte for byte as a fresh encoding
of the table; tables staged earlier stay as they were. Then through apply on the memory
runtime, many nodes at once: no instance is stopped while a balancer serves a table that
still lists it, and the last table holds every node's new settings.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.table import (
    AccessKey,
    AccessRule,
    AliasEntry,
    Endpoint,
    HealthSettings,
    NodeEntry,
    RoutingTable,
    encode_table,
    read_table,
)
from gitops_nodes import workflow
from gitops_nodes.apply import ApplyOptions, _Published
from gitops_nodes.live import LiveInstance, LiveState
from gitops_nodes.runtime.memory import MemoryRuntime, VirtualClock
from gitops_nodes.spec.state import DesiredState
from gitops_nodes.statedir import StateDir
from tests.unit.memory_world import PROJECT, alias, node, spec

# The tables are fsynced: on a tmpfs that costs nothing, on a disk milliseconds.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None
PRIVATE = AccessRule((AccessKey("ci", "0" * 64),))
PUBLISHED_AT = 7  # the generation of the table published before the apply


def endpoint(instance: str) -> Endpoint:
    return Endpoint(instance, "127.0.0.1", 20000 + int(instance.rsplit("-", 1)[1]))


def instance(name: str, node_name: str) -> LiveInstance:
    port = endpoint(name).port
    return LiveInstance(name, node_name, 0, "h", None, "running", port, 0.0)


def world(root: Path) -> tuple[LiveState, DesiredState]:
    """Published before: a (i-0, i-1, min_healthy 1), b (i-2) and gone (i-3, not in the
    spec). The spec: a with min_healthy 2, b, and c, private, whose i-4 runs unpublished."""
    table = RoutingTable(
        PUBLISHED_AT,
        MappingProxyType(
            {
                "a": NodeEntry((endpoint("i-0"), endpoint("i-1")), 1, HealthSettings()),
                "b": NodeEntry((endpoint("i-2"),), 1, HealthSettings()),
                "gone": NodeEntry((endpoint("i-3"),), 1, HealthSettings(path="/ok")),
            }
        ),
        MappingProxyType({"front": AliasEntry((("a", 100),))}),
    )
    owners = {"i-0": "a", "i-1": "a", "i-2": "b", "i-3": "gone", "i-4": "c"}
    live = LiveState(PROJECT, tuple(instance(n, o) for n, o in owners.items()), table=table)
    desired = spec(
        root,
        node("a", instances=2, min_healthy=2),
        node("b"),
        replace(node("c"), access=PRIVATE),
    )
    return live, desired


def published(live: LiveState, desired: DesiredState) -> _Published:
    return _Published(live, desired, MemoryRuntime().fleet(PROJECT), {})


def names(table: RoutingTable, node_name: str) -> list[str]:
    return [e.instance for e in table.nodes[node_name].endpoints]


def test_a_stage_shows_what_changed_since_the_last_and_keeps_the_rest(tmp_path: Path) -> None:
    live, desired = world(tmp_path)
    table = published(live, desired)
    state = StateDir(tmp_path / "state")

    first = table.stage()
    staged = table.staged
    assert first == PUBLISHED_AT + 1 and staged is not None
    assert staged.nodes["a"].min_healthy == 1  # as published: no publish of a's yet
    assert names(staged, "c") == ["i-4"]  # running, never published: picked up
    assert table.removed_at == {}

    assert table.configure("a").min_healthy == 2
    table.rotate("a", [endpoint("i-1"), endpoint("i-5")])  # i-0 replaced by i-5
    second = table.stage()
    table.flush(state, second)
    after = table.staged
    assert after is not None and after.generation == second
    assert after.nodes["a"].min_healthy == 2
    assert names(after, "a") == ["i-1", "i-5"]
    assert after.nodes["b"] is staged.nodes["b"]  # untouched: kept, not rebuilt
    assert table.removed_at == {"i-0": second}
    assert state.table.read_bytes() == encode_table(after)

    table.configure("b")  # its settings alone: the spec checks /healthz, the table had TCP
    third = table.stage()
    assert table.staged is not None and table.staged.nodes["b"].health.path == "/healthz"
    assert names(table.staged, "b") == ["i-2"]

    table.rotate("b", [])  # b's only instance leaves
    fourth = table.stage()
    table.drop("gone")
    table.unroute("front")
    fifth = table.stage()
    table.flush(state, fifth)
    last = table.staged
    assert last is not None and third < fourth < fifth
    # Each instance keeps the generation that took it out, not a later one.
    assert table.removed_at == {"i-0": second, "i-2": fourth, "i-3": fifth}
    assert list(last.nodes) == ["a", "b", "c"] and dict(last.aliases) == {}
    assert state.table.read_bytes() == encode_table(last)
    assert encode_table(last).count(b"routing-table/v2") == 1  # c is private

    # A table staged earlier is a value: what came after left it as it was.
    assert staged.nodes["a"].min_healthy == 1 and names(staged, "a") == ["i-0", "i-1"]
    assert "gone" in staged.nodes and "front" in staged.aliases


# --- against a model that rebuilds everything at every stage ---------------------------------

NODES = ("a", "b", "c", "gone", "x")  # x: neither published before nor in the spec
INSTANCES = tuple(f"i-{i}" for i in range(7))  # any node may list any: moves between nodes too
ALIASES = (
    AliasEntry((("a", 100),)),
    AliasEntry((("a", 90), ("c", 10)), "x-user"),
    AliasEntry((("b", 100),), access=PRIVATE),
)

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("rotate"),
            st.sampled_from(NODES),
            st.lists(st.sampled_from(INSTANCES), max_size=3, unique=True),
        ),
        st.tuples(st.sampled_from(("include", "configure", "drop")), st.sampled_from(NODES)),
        st.tuples(st.just("route"), st.sampled_from(("front", "back")), st.sampled_from(ALIASES)),
        st.tuples(st.just("unroute"), st.sampled_from(("front", "back"))),
        st.tuples(st.just("stage")),
        st.tuples(st.just("flush")),
    ),
    max_size=25,
)


@dataclass
class Model:
    """The table rebuilt whole at every stage, and the set of instances it lists."""

    desired: DesiredState
    table: RoutingTable
    rotation: dict[str, tuple[Endpoint, ...]]
    settings: dict[str, NodeEntry] = field(default_factory=dict)
    aliases: dict[str, AliasEntry] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)
    removed_at: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.settings = dict(self.table.nodes)
        self.aliases = dict(self.table.aliases)
        self.written = {e.instance for n in self.table.nodes.values() for e in n.endpoints}

    def settings_for(self, name: str, real: _Published) -> NodeEntry:
        if name in self.desired.nodes:
            return real.settings_for(name)  # a function of the spec alone
        return self.settings.get(name, NodeEntry((), 1, HealthSettings()))

    def apply(self, operation: tuple[Any, ...], real: _Published) -> None:
        kind, *args = operation
        if kind == "rotate":
            self.rotation[args[0]] = tuple(endpoint(i) for i in args[1])
        elif kind == "include":
            self.rotation.setdefault(args[0], ())
        elif kind == "configure":
            self.settings[args[0]] = self.settings_for(args[0], real)
        elif kind == "drop":
            self.rotation.pop(args[0], None)
            self.settings.pop(args[0], None)
        elif kind == "route":
            self.aliases[args[0]] = args[1]
        elif kind == "unroute":
            self.aliases.pop(args[0], None)

    def stage(self, generation: int, real: _Published) -> RoutingTable:
        nodes = {
            name: replace(
                self.settings.get(name) or self.settings_for(name, real), endpoints=endpoints
            )
            for name, endpoints in sorted(self.rotation.items())
        }
        now = {e.instance for endpoints in self.rotation.values() for e in endpoints}
        for gone in self.written - now:
            self.removed_at[gone] = generation
        self.written = now
        aliases = dict(sorted(self.aliases.items()))
        return RoutingTable(generation, MappingProxyType(nodes), MappingProxyType(aliases))


def perform(table: _Published, operation: tuple[Any, ...]) -> None:
    kind, *args = operation
    if kind == "rotate":
        table.rotate(args[0], [endpoint(i) for i in args[1]])
    elif kind == "include":
        table.include(args[0])
    elif kind == "configure":
        table.configure(args[0])
    elif kind == "drop":
        table.drop(args[0])
    elif kind == "route":
        table.route(args[0], args[1])
    elif kind == "unroute":
        table.unroute(args[0])


@settings(max_examples=300, derandomize=True, deadline=None)
@given(operations=operations)
def test_every_stage_publishes_what_rebuilding_every_node_would(
    operations: list[tuple[Any, ...]],
) -> None:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as folder:
        root = Path(folder)
        live, desired = world(root)
        table = published(live, desired)
        model = Model(desired, live.table or RoutingTable(), dict(table.rotation))
        state = StateDir(root / "state")
        seen: list[tuple[RoutingTable, RoutingTable]] = []  # (staged, the model's)
        for operation in [("stage",), *operations, ("stage",), ("flush",)]:
            if operation[0] == "stage":
                generation = table.stage()
                assert table.staged is not None and generation == table.staged.generation
                expected = model.stage(generation, table)
                assert table.staged == expected
                assert list(table.staged.nodes) == list(expected.nodes)  # in name order
                assert table.removed_at == model.removed_at
                seen.append((table.staged, expected))
            elif operation[0] == "flush":
                if table.staged is not None:
                    table.flush(state, table.generation)
                    assert state.table.read_bytes() == encode_table(table.staged)
            else:
                perform(table, operation)
                model.apply(operation, table)
                assert dict(table.rotation) == model.rotation
        for staged, expected in seen:  # none changed since it was staged
            assert staged == expected


# --- through apply ---------------------------------------------------------------------------


class StopWatch(MemoryRuntime):
    """Notes each instance stopped while a balancer serves a table that lists it."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.stopped: list[str] = []
        self.stopped_while_listed: list[str] = []

    def stop_instance(self, project: str, name: str, grace: float) -> str:
        for balancer in self.fleet(project).balancers:
            # What it serves at this moment: read, not caught up (apply's polls do that).
            due = [t for at, t in balancer.pending if at + balancer.lag <= self.clock.now]
            served = due[-1] if due else balancer.serving
            if served and any(
                name in {e.instance for e in n.endpoints} for n in served.nodes.values()
            ):
                self.stopped_while_listed.append(name)
        self.stopped.append(name)
        return super().stop_instance(project, name, grace)


def test_a_rolling_change_of_many_nodes_drains_each_old_instance_from_the_table_first(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    runtime = StopWatch(clock)
    state = StateDir(tmp_path / "state")
    options = ApplyOptions(parallelism=8, drain_timeout=30.0, stop_grace=1.0, clock=clock)
    names = [f"n{i}" for i in range(12)]
    front = alias("front", *((n, 10) for n in names))
    before = spec(tmp_path, *(node(n, instances=2) for n in names), front)
    assert workflow.apply(before, runtime, PROJECT, state, options).report is not None
    runtime.fleet(PROJECT).start(lag=0.3)  # serves each table 0.3 virtual seconds late
    # Every other node replaced; the others' minHealthy changes (a publish of settings alone).
    replaced = names[::2]
    old = {c.name for c in runtime.containers.values() if c.node in replaced}
    after = spec(
        tmp_path,
        *(
            node(n, instances=2, version="2")
            if n in replaced
            else node(n, instances=2, min_healthy=2)
            for n in names
        ),
        front,
    )

    run = workflow.apply(after, runtime, PROJECT, state, options)

    assert run.report is not None and run.report.ok
    assert set(runtime.stopped) == old
    assert runtime.stopped_while_listed == []
    table = read_table(state.table)
    assert table is not None and list(table.nodes) == sorted(names)
    for name in names:
        entry = table.nodes[name]
        assert entry.min_healthy == (1 if name in replaced else 2)
        assert {e.instance for e in entry.endpoints} == {
            c.name for c in runtime.containers.values() if c.node == name
        }
