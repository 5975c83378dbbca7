"""Progressive delivery's pure parts: the weights of each step, and how a step is judged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gitops_nodes.rollout import error_rate, gaining, rollout_steps, step_routes
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import load_spec

WriteRepo = Callable[[dict[str, str]], Path]


def test_steps_move_each_share_linearly_and_end_on_the_spec() -> None:
    steps = rollout_steps((("v1", 100),), (("v2", 100),), [10, 50])
    assert steps == [
        (("v2", 100), ("v1", 900)),
        (("v2", 500), ("v1", 500)),
        (("v2", 100),),
    ]


def test_steps_start_from_a_split_and_keep_nodes_in_both() -> None:
    before = (("v1", 90), ("v2", 10))
    after = (("v1", 50), ("v2", 50))
    assert step_routes(before, after, 50) == (("v1", 700), ("v2", 300))
    assert step_routes(before, after, 100) == after


def test_gaining_nodes_are_the_ones_whose_share_grows() -> None:
    assert gaining((("v1", 100),), (("v1", 50), ("v2", 50))) == ["v2"]
    assert gaining((("v1", 1), ("v2", 1)), (("v1", 1), ("v2", 1))) == []


def test_error_rate_counts_only_the_given_nodes_between_snapshots() -> None:
    start = {"v1": (100, 0), "v2": (10, 1)}
    end = {"v1": (200, 50), "v2": (30, 6)}
    assert error_rate(start, end, ["v2"]) == (20, 0.25)
    assert error_rate(start, end, ["v3"]) == (0, 0.0)


ALIAS = """
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: v2}
spec:
  image: {name: x, port: 80}
---
apiVersion: gitops-nodes/v1
kind: Alias
metadata: {name: api}
spec:
  nodes: [{node: v2}]
  rollout: {steps: STEPS, pause: 10s, maxErrorRate: 0.02}
"""


def test_a_rollout_is_read_from_the_alias(write_repo: WriteRepo) -> None:
    state = load_spec(write_repo({"a.yaml": ALIAS.replace("STEPS", "[10, 50]")}))
    rollout = state.aliases["api"].rollout
    assert rollout is not None
    assert (rollout.steps, rollout.pause, rollout.max_error_rate) == ([10, 50], 10.0, 0.02)


@pytest.mark.parametrize("steps", ["[50, 10]", "[0, 50]", "[100]", "[]"])
def test_rollout_steps_must_be_increasing_percentages(write_repo: WriteRepo, steps: str) -> None:
    with pytest.raises(SpecErrors) as caught:
        load_spec(write_repo({"a.yaml": ALIAS.replace("STEPS", steps)}))
    (problem,) = caught.value.problems
    assert problem.field == "spec.rollout.steps"
