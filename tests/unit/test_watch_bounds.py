"""What `watch` keeps from one reconcile to the next stays bounded, and quiet polls stay quiet."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from balancer.table import RoutingTable
from gitops_nodes.fleet import BalancerFleet, LocalBalancers
from gitops_nodes.live import LiveInstance
from gitops_nodes.runtime.base import Runtime
from gitops_nodes.statedir import StateDir
from gitops_nodes.watch.reconcile import HISTORY_KEPT, REFUSED_KEPT, Reconciler
from gitops_nodes.watch.source import Revision

BAD = "apiVersion: gitops-nodes/v1\nkind: Node\nmetadata: {name: web}\nspec: {instances: 0}\n"


class NothingRuntime:
    """A Docker engine with nothing on it: all an empty spec's reconcile asks of a runtime."""

    name = "memory"

    def list_instances(self, project: str) -> list[LiveInstance]:
        return []

    def list_images(self, project: str) -> set[str]:
        return set()

    def balancers(self, project: str, state: StateDir) -> BalancerFleet:
        return LocalBalancers(state)

    def served_table(self, project: str, state: StateDir) -> RoutingTable | None:
        return None


def _reconciler(tmp_path: Path, summary_every: float = 3600.0) -> Reconciler:
    runtime: Runtime = NothingRuntime()  # type: ignore[assignment]
    state = StateDir.for_project("p", tmp_path / "state")
    return Reconciler("p", state, lambda: runtime, summary_every=summary_every)


def _revision(n: int, tree: Path) -> Revision:
    return Revision(id=f"{n:040x}", tree=tree, summary=f"commit {n}")


def test_refused_commits_are_kept_up_to_a_bound_the_newest_first(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "n.yaml").write_text(BAD)
    reconciler = _reconciler(tmp_path)

    for n in range(REFUSED_KEPT * 3):
        assert reconciler.reconcile(_revision(n, bad), "hook").outcome == "invalid"

    assert len(reconciler.refused) == REFUSED_KEPT
    newest = _revision(REFUSED_KEPT * 3 - 1, bad).id
    assert newest in reconciler.refused  # the one the loop looks up
    assert _revision(0, bad).id not in reconciler.refused


def test_unchanged_reconciles_log_at_debug_with_a_periodic_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    quiet = _reconciler(tmp_path, summary_every=3600.0)
    caplog.set_level(logging.DEBUG, logger="gitops_nodes.watch")

    for _ in range(5):
        assert quiet.reconcile(_revision(1, empty), "interval").outcome == "unchanged"

    polls = [r for r in caplog.records if r.name == "gitops_nodes.watch"]
    assert len(polls) == 5
    # The first look at a revision says at info what is live; the polls after it are quiet.
    assert [r.levelno for r in polls] == [logging.INFO] + [logging.DEBUG] * 4

    summarised = _reconciler(tmp_path, summary_every=0.0)  # a summary at every quiet poll
    summarised.reconcile(_revision(1, empty), "interval")
    caplog.clear()
    for _ in range(2):
        summarised.reconcile(_revision(1, empty), "interval")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 2
    assert infos[0].startswith("1 reconciles in the last ")
    assert "found nothing to change" in infos[1]


def test_the_reconcile_history_is_bounded_skips_quiet_polls_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "n.yaml").write_text(BAD)
    empty = tmp_path / "empty"
    empty.mkdir()
    reconciler = _reconciler(tmp_path)
    for n in range(HISTORY_KEPT + 5):
        reconciler.reconcile(_revision(n, bad), "hook")
    reconciler.reconcile(_revision(999, empty), "console")
    for _ in range(5):  # the interval finding nothing new: counted, not kept
        reconciler.reconcile(_revision(999, empty), "interval")

    history = reconciler.status()["history"]
    assert history == list(reconciler.history)
    assert len(history) == HISTORY_KEPT
    assert history[-1]["reason"] == "console" and history[-1]["outcome"] == "unchanged"
    assert history[-2]["revision"] == _revision(HISTORY_KEPT + 4, bad).id
    assert history[0]["revision"] == _revision(6, bad).id  # the oldest ones went

    class NoSource:
        def at(self, revision_id: str) -> None:
            return None

    again = _reconciler(tmp_path)  # a restarted watch, on the same state directory
    again.restore(NoSource())  # type: ignore[arg-type]
    assert list(again.history) == history
