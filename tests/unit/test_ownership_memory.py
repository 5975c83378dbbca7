"""R-own on the memory runtime, through plan and apply: a container without our owner id is
never touched, whatever the spec, and a copy of an instance started by a third party is
never preferred to the instance the routing table serves."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.table import Endpoint, NodeEntry, RoutingTable, write_table
from gitops_nodes import workflow
from gitops_nodes.live import UNLABELLED
from gitops_nodes.runtime.memory import MUTATING
from gitops_nodes.statedir import StateDir, read_ownership
from tests.unit.memory_world import PROJECT, World, alias, node, spec

THEIRS = "b" * 32


def touched(world: World) -> set[str]:
    """The containers some mutating engine call named."""
    return {what for operation, what in world.runtime.calls if operation in MUTATING}


def served(world: World, node_name: str) -> set[str]:
    table = world.live().table
    assert table is not None
    return {e.instance for e in table.nodes[node_name].endpoints}


def test_apply_labels_what_it_creates_with_the_state_directorys_owner_id(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    assert world.apply(spec(tmp_path, node("web", instances=2))).report is not None
    owner = read_ownership(world.state).owner
    assert owner and {c.owner for c in world.runtime.containers.values()} == {owner}


def test_another_owners_containers_survive_apply_and_destroy(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.fleet.start()
    theirs = {
        world.runtime.seed(PROJECT, node("old"), 0, owner=THEIRS).name,
        world.runtime.seed(PROJECT, node("web"), 0, owner=THEIRS).name,
        world.runtime.seed(PROJECT, node("web"), 1, owner=UNLABELLED).name,
    }
    run = world.apply(spec(tmp_path, node("web"), alias("front", ("web", 100))))
    assert run.report is not None and run.report.ok, run.report
    assert {i.name for i in run.plan.left_alone} == theirs
    ours = served(world, "web")
    assert ours.isdisjoint(theirs)  # it made its own web/0, beside theirs

    destroyed = world.apply(workflow.empty_spec(tmp_path))
    assert destroyed.report is not None and destroyed.report.ok, destroyed.report
    assert set(world.runtime.containers) == theirs  # ours gone, theirs all left
    assert touched(world).isdisjoint(theirs)


@pytest.mark.parametrize("copy_owner", [True, False], ids=["owner-copied", "owner-not-copied"])
def test_an_impostor_is_never_preferred_to_the_served_instance(
    tmp_path: Path, copy_owner: bool
) -> None:
    world = World(tmp_path)
    world.fleet.start()
    desired = spec(tmp_path, node("web"), alias("front", ("web", 100)))
    assert world.apply(desired).report is not None
    [real] = served(world, "web")
    impostor = world.runtime.impostor(real, copy_owner=copy_owner).name
    assert impostor < real  # an order by name alone would keep it

    run = world.apply(desired)

    assert served(world, "web") == {real} and real in world.runtime.containers
    assert real not in touched(world)
    if copy_owner:  # ours by its labels: a second instance 0, removed
        assert run.report is not None and run.report.ok, run.report
        assert impostor not in world.runtime.containers
    else:  # not ours: reported, never touched
        assert run.report is None and [i.name for i in run.plan.left_alone] == [impostor]
        assert impostor in world.runtime.containers and impostor not in touched(world)


names = st.sampled_from(["api", "web", "old"])


@settings(max_examples=60, deadline=None)
@given(
    first=st.sets(names, min_size=1),
    second=st.sets(names, min_size=1),
    version=st.sampled_from(["1", "2"]),
    strangers=st.lists(
        st.tuples(names, st.integers(0, 2), st.sampled_from([THEIRS, UNLABELLED])), max_size=4
    ),
    copies=st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=3),
)
def test_no_apply_touches_a_container_without_our_owner_id_nor_prefers_a_copy(
    first: set[str],
    second: set[str],
    version: str,
    strangers: list[tuple[str, int, str]],
    copies: list[tuple[int, bool]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        world = World(root)
        world.fleet.start()
        assert world.apply(spec(root, *(node(n, instances=2) for n in sorted(first))))
        reals = sorted(world.runtime.containers)
        theirs = {world.runtime.seed(PROJECT, node(n), i, owner=o).name for n, i, o in strangers}
        unowned_copies = set()
        for pick, copy_owner in copies:
            copy = world.runtime.impostor(
                reals[pick % len(reals)], copy_owner=copy_owner, name=f"copy-{pick}-{copy_owner}"
            )
            if not copy_owner:
                unowned_copies.add(copy.name)
        calls_before = len(world.runtime.calls)

        wanted = [node(n, instances=2, version=version) for n in sorted(second)]
        world.apply(spec(root, *wanted))

        made = {what for op, what in world.runtime.calls[calls_before:] if op in MUTATING}
        assert made.isdisjoint(theirs | unowned_copies)
        assert (theirs | unowned_copies) <= set(world.runtime.containers)
        if version == "1":  # nodes kept with the same spec keep their real instances
            for name in reals:
                if name.split("-")[1] in second:
                    assert name in world.runtime.containers, name
                    assert name not in made


def test_an_upgrade_keeps_the_containers_made_before_owner_labels(tmp_path: Path) -> None:
    world = World(tmp_path)
    web = node("web")
    old = world.runtime.seed(PROJECT, web, 0, owner=UNLABELLED)  # made by an older version
    entry = NodeEntry((Endpoint(old.name, "127.0.0.1", old.port or 0),), 1, web.health)
    world.state.path.mkdir(parents=True)
    write_table(world.state.table, RoutingTable(1, {"web": entry}, {}))  # which it published

    run = world.apply(spec(tmp_path, web))

    assert run.report is None and run.plan.left_alone == ()  # still its own: nothing to do
    assert read_ownership(world.state).adopted == frozenset({UNLABELLED})
    elsewhere = workflow.observe(world.runtime, PROJECT, StateDir(tmp_path / "elsewhere"))
    assert [i.name for i in elsewhere.foreign] == [old.name]  # a new state dir: not its own
