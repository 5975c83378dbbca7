"""Publishing at scale: independent nodes' publishes that come together share one write of
the routing table, and a publish still ends only once a table holding its change is written."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from balancer.table import RoutingTable, TableEncoder, read_table, write_table
from gitops_nodes import apply as apply_module
from gitops_nodes import workflow
from gitops_nodes.apply import ApplyOptions, Outcome, StepResult
from gitops_nodes.plan import Step
from tests.unit.memory_world import PROJECT, World, node, spec

NODES = 16


def test_publishes_share_writes_and_end_after_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(tmp_path)
    real_write = write_table  # what gitops_nodes.apply writes with
    writes: list[int] = []
    lock = threading.Lock()

    def slow_write(path: Path, table: RoutingTable, encoder: TableEncoder | None = None) -> None:
        time.sleep(0.1)  # a large table's JSON and fsync: what makes one write per publish cost
        real_write(path, table, encoder)
        with lock:
            writes.append(table.generation)

    monkeypatch.setattr(apply_module, "write_table", slow_write)
    unseen: list[str] = []

    def check(result: StepResult) -> None:
        # when a publish step ends, the table on disk already routes to its instance
        step = result.step
        if step.step is not Step.PUBLISH or result.outcome is not Outcome.DONE:
            return
        table = read_table(world.state.table)
        assert table is not None
        names = {e.instance for e in table.nodes[step.node or ""].endpoints}
        if not names:
            unseen.append(step.id)

    desired = spec(tmp_path, *(node(f"n{i:02d}") for i in range(NODES)))
    run = workflow.apply(
        desired,
        world.runtime,
        PROJECT,
        world.state,
        ApplyOptions(parallelism=8, drain_timeout=5.0, stop_grace=1.0, clock=world.clock),
        on_result=check,
    )

    assert run.report is not None and run.report.ok
    assert unseen == []
    assert writes == sorted(writes)  # in generation order
    publishes = [s for s in run.plan.steps() if s.step is Step.PUBLISH]
    assert len(publishes) == NODES
    assert len(writes) < len(publishes), (len(writes), len(publishes))
    final = read_table(world.state.table)
    assert final is not None and len(final.nodes) == NODES
    assert all(len(entry.endpoints) == 1 for entry in final.nodes.values())
