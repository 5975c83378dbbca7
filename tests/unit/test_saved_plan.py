"""`apply FILE` takes exactly what `plan -out` writes, and refuses a file cut short, in one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.errors import PlanFileError
from gitops_nodes.live import LiveState
from gitops_nodes.plan import make_plan
from gitops_nodes.spec.state import DesiredState
from gitops_nodes.workflow import read_saved_plan, saved_plan_json
from tests.unit.test_diff_plan import alias_doc, node_doc

PROJECT = "saved"


@pytest.fixture
def saved(desired: Callable[..., DesiredState], tmp_path: Path) -> dict[str, Any]:
    spec = desired(node_doc("web", instances=2), alias_doc("front", ("web", 100)))
    plan = make_plan(PROJECT, spec, LiveState(PROJECT))
    data: dict[str, Any] = json.loads(saved_plan_json(plan, spec.root))
    return data


def test_a_saved_plan_reads_back_as_it_was_written(saved: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(saved))
    assert read_saved_plan(path) == saved
    assert saved["steps"] and saved["project"] == PROJECT


@pytest.mark.parametrize(
    "key", ["project", "specDigest", "liveDigest", "changes", "steps", "summary", "root", "runtime"]
)
def test_a_plan_missing_any_part_is_refused_naming_it(
    saved: dict[str, Any], tmp_path: Path, key: str
) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({k: v for k, v in saved.items() if k != key}))
    with pytest.raises(PlanFileError) as caught:
        read_saved_plan(path)
    message = str(caught.value)
    assert f"is not a complete plan of this gitops-nodes version: {key} is missing" in message
    assert "\n" not in message
