"""R-prune's checks, pure: an empty spec over live nodes, and watch's destroy budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitops_nodes.guards import Refused, check_destroy_budget, check_not_empty
from gitops_nodes.live import LiveInstance, LiveState
from gitops_nodes.plan import make_plan
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.settings import parse_settings
from tests.unit.memory_world import PROJECT, node, spec


def live_with(*names: str) -> LiveState:
    return LiveState(
        PROJECT,
        tuple(
            LiveInstance(f"{PROJECT}-{n}-0", n, 0, node(n).spec_hash, None, "running", 30000 + i)
            for i, n in enumerate(names)
        ),
    )


def test_an_empty_spec_over_live_nodes_is_refused_saying_how_to_mean_it(tmp_path: Path) -> None:
    with pytest.raises(Refused) as refused:
        check_not_empty(spec(tmp_path), live_with("a", "b"), "pass --allow-empty")

    text = str(refused.value)
    assert "has no Node or Alias document" in text
    assert "2 live nodes (a, b)" in text
    assert "pass --allow-empty" in text
    assert "gitops-nodes destroy" in text


def test_an_empty_spec_with_nothing_live_or_a_spec_with_nodes_passes(tmp_path: Path) -> None:
    check_not_empty(spec(tmp_path), LiveState(PROJECT), "pass --allow-empty")
    check_not_empty(spec(tmp_path, node("z")), live_with("a", "b"), "pass --allow-empty")


@pytest.mark.parametrize(
    ("live", "kept", "percent", "refused"),
    [
        (("a",), (), 50, False),  # the only node may always go (a rename replaces it)
        (("a", "b"), ("a",), 50, False),
        (("a", "b"), (), 50, True),
        (("a", "b", "c", "d"), ("a", "b"), 50, False),
        (("a", "b", "c", "d"), ("a",), 50, True),
        (("a", "b", "c", "d"), (), 100, False),
        (("a", "b", "c", "d"), ("a", "b", "c"), 0, False),
    ],
)
def test_the_destroy_budget(
    tmp_path: Path, live: tuple[str, ...], kept: tuple[str, ...], percent: int, refused: bool
) -> None:
    state = live_with(*live)
    plan = make_plan(PROJECT, spec(tmp_path, *(node(n) for n in kept)), state)
    if refused:
        with pytest.raises(Refused, match="over the destroy budget"):
            check_destroy_budget(plan, state, percent)
    else:
        check_destroy_budget(plan, state, percent)


def test_the_settings_spell_allow_empty_and_the_budget() -> None:
    settings = parse_settings(b"allowEmpty: true\ndestroyBudget: 80\n")
    assert (settings.allow_empty, settings.destroy_budget) == (True, 80)
    assert (parse_settings(b"").allow_empty, parse_settings(b"").destroy_budget) == (False, 50)
    with pytest.raises(SpecErrors, match="destroyBudget"):
        parse_settings(b"destroyBudget: 150\n")
