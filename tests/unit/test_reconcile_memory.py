"""The watch reconcile on the memory runtime: revisions made live, refused or failed, in
milliseconds. R-prune (an empty revision, the destroy budget) and R-route (a failed wait keeps
traffic where it was) as watch meets them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from balancer.table import read_table
from gitops_nodes.apply import ApplyOptions
from gitops_nodes.runtime.memory import NEVER_HEALTHY, Crash, Faults, MemoryRuntime, VirtualClock
from gitops_nodes.statedir import StateDir
from gitops_nodes.watch.reconcile import Reconciler
from gitops_nodes.watch.source import Revision
from tests.cycles import Cycles

PROJECT = "mem"


def node_doc(name: str, version: str = "1") -> dict[str, object]:
    return {
        "apiVersion": "gitops-nodes/v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {
            "image": {"name": "busybox", "port": 8080},
            "env": {"VERSION": version},
            "healthCheck": {"path": "/healthz", "startTimeout": "10s"},
        },
    }


def alias_doc(name: str, *routes: tuple[str, int]) -> dict[str, object]:
    return {
        "apiVersion": "gitops-nodes/v1",
        "kind": "Alias",
        "metadata": {"name": name},
        "spec": {"nodes": [{"node": n, "weight": w} for n, w in routes]},
    }


class Repo:
    """Revisions written as folders, one per commit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def commit(self, *documents: dict[str, object], settings: str | None = None) -> Revision:
        self.count += 1
        tree = self.root / f"rev{self.count}"
        tree.mkdir(parents=True)
        if documents:
            (tree / "spec.yaml").write_text(yaml.safe_dump_all(documents))
        else:
            (tree / "README.md").write_text("nothing to deploy here\n")
        if settings is not None:
            (tree / "gitops-nodes.yaml").write_text(settings)
        return Revision(f"{self.count:040x}", tree, f"commit {self.count}")


@pytest.fixture
def world(tmp_path: Path) -> tuple[Reconciler, MemoryRuntime, Repo]:
    runtime = MemoryRuntime(VirtualClock(), Faults())
    runtime.fleet(PROJECT).start()
    options = ApplyOptions(parallelism=1, drain_timeout=5, stop_grace=1, clock=runtime.clock)
    reconciler = Reconciler(PROJECT, StateDir(tmp_path / "state"), lambda: runtime, options)
    return reconciler, runtime, Repo(tmp_path / "repo")


def alias_routes(reconciler: Reconciler, name: str) -> object:
    table = read_table(reconciler.state.table)
    return table.aliases[name].targets if table and name in table.aliases else None


THREE = (node_doc("a"), node_doc("b"), node_doc("c"), alias_doc("front", ("a", 100)))


def test_a_quiet_reconcile_leaves_no_reference_cycles(
    world: tuple[Reconciler, MemoryRuntime, Repo],
) -> None:
    """watch reconciles on every interval for months: garbage in reference cycles waits for a
    full collection, which comes rarely in a large heap, so it shows as steady RSS growth."""
    reconciler, _, repo = world
    revision = repo.commit(*THREE)
    assert reconciler.reconcile(revision, "start").outcome == "applied"
    assert reconciler.reconcile(revision, "interval").outcome == "unchanged"  # caches warm
    with Cycles() as cycles:
        for _ in range(5):
            assert reconciler.reconcile(revision, "interval").outcome == "unchanged"
    assert not cycles.found, f"5 quiet reconciles left objects in cycles: {cycles.found}"


def test_an_empty_revision_is_refused_and_the_nodes_keep_serving(
    world: tuple[Reconciler, MemoryRuntime, Repo],
) -> None:
    reconciler, runtime, repo = world
    assert reconciler.reconcile(repo.commit(*THREE), "start").outcome == "applied"
    before = dict(runtime.containers)

    result = reconciler.reconcile(repo.commit(), "commit")

    assert result.outcome == "refused"
    assert result.error is not None
    assert "no Node or Alias document" in result.error
    assert "set `allowEmpty: true` in its gitops-nodes.yaml" in result.error
    assert runtime.containers.keys() == before.keys()
    assert all(runtime.is_healthy(name) for name in runtime.containers)
    assert reconciler.applied is not None and reconciler.applied.summary == "commit 1"


def test_allow_empty_in_the_settings_lets_an_empty_revision_destroy_everything(
    world: tuple[Reconciler, MemoryRuntime, Repo],
) -> None:
    reconciler, runtime, repo = world
    assert reconciler.reconcile(repo.commit(*THREE), "start").outcome == "applied"

    result = reconciler.reconcile(repo.commit(settings="allowEmpty: true\n"), "commit")

    assert result.outcome == "applied", result.error
    assert runtime.containers == {}


def test_a_revision_over_the_destroy_budget_is_refused_unless_the_settings_allow_it(
    world: tuple[Reconciler, MemoryRuntime, Repo],
) -> None:
    reconciler, runtime, repo = world
    assert reconciler.reconcile(repo.commit(*THREE), "start").outcome == "applied"

    refused = reconciler.reconcile(repo.commit(node_doc("a"), alias_doc("front", ("a", 100))), "x")
    assert refused.outcome == "refused"
    assert refused.error is not None
    assert "destroys 2 of the 3 live nodes (b, c)" in refused.error
    assert "destroyBudget" in refused.error
    assert len(runtime.containers) == 3

    one = reconciler.reconcile(
        repo.commit(node_doc("a"), node_doc("b"), alias_doc("front", ("a", 100))), "x"
    )
    assert one.outcome == "applied"  # one node of three is within the budget
    allowed = reconciler.reconcile(
        repo.commit(alias_doc("front", ("z", 100)), node_doc("z"), settings="destroyBudget: 100\n"),
        "x",
    )
    assert allowed.outcome == "applied", allowed.error
    assert {c.node for c in runtime.containers.values()} == {"z"}


def test_a_revision_whose_instances_never_turn_healthy_fails_and_the_alias_stays(
    world: tuple[Reconciler, MemoryRuntime, Repo],
) -> None:
    reconciler, runtime, repo = world
    assert reconciler.reconcile(repo.commit(node_doc("a"), alias_doc("f", ("a", 100))), "s").ok
    runtime.faults.scripts["b"] = NEVER_HEALTHY

    result = reconciler.reconcile(repo.commit(node_doc("b"), alias_doc("f", ("b", 100))), "x")

    assert result.outcome == "failed"
    assert result.error is not None and "wait b/0" in result.error
    assert alias_routes(reconciler, "f") == (("a", 100),)
    assert {c.node for c in runtime.containers.values()} == {"a"}


def test_a_reconcile_killed_midway_converges_on_the_next_one(
    world: tuple[Reconciler, MemoryRuntime, Repo],
) -> None:
    reconciler, runtime, repo = world
    revision = repo.commit(*THREE)
    runtime.faults.crash_at_call = 2  # after the first container was created

    with pytest.raises(Crash):
        reconciler.reconcile(revision, "start")
    assert len(runtime.containers) == 1
    result = reconciler.reconcile(revision, "start")

    assert result.outcome == "applied", result.error
    assert sorted(c.node for c in runtime.containers.values()) == ["a", "b", "c"]
    assert alias_routes(reconciler, "front") == (("a", 100),)
