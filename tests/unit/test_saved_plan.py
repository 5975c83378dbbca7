"""`apply FILE` takes exactly what `plan -out` writes, and refuses a file cut short, in one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes import cli
from gitops_nodes.cli import main
from gitops_nodes.errors import GitopsNodesError, PlanFileError
from gitops_nodes.live import LiveState
from gitops_nodes.plan import make_plan
from gitops_nodes.spec.state import DesiredState
from gitops_nodes.workflow import project_name, read_saved_plan, saved_plan_json
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


@pytest.mark.parametrize(
    "project",
    ["Saved", "a..b", "x" * 64, "-saved", "a/b", "", "sa ved"],
    ids=["uppercase", "dots", "64 characters", "a leading dash", "a slash", "empty", "a space"],
)
def test_a_plan_for_a_project_no_flag_could_name_is_refused(
    saved: dict[str, Any], tmp_path: Path, project: str
) -> None:
    # Before: accepted, and apply made containers that no command could name to destroy
    # (--project takes Compose's names only); a long one was a traceback (a file name).
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**saved, "project": project}))
    with pytest.raises(PlanFileError, match="project is not what plan -out writes"):
        read_saved_plan(path)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--project", "other"], "--project other contradicts the saved plan, made for project"),
        (["--runtime", "swarm"], "--runtime swarm contradicts the saved plan, made for runtime"),
    ],
    ids=["another project", "another runtime"],
)
def test_apply_refuses_flags_a_saved_plan_contradicts_before_touching_anything(
    saved: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    words: str,
) -> None:
    # Before: --runtime won over the plan's (a plan reviewed for a Swarm went to one host),
    # and another --project was refused as stale only after its state directory was made.
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(saved))
    state = tmp_path / "state"

    code = main(["apply", str(path), "--state-dir", str(state), *flags])

    assert code == 1
    assert words in capsys.readouterr().err
    assert not state.exists()  # nothing of any project's was made


def test_a_folder_with_no_letter_or_digit_names_no_project(tmp_path: Path) -> None:
    # Before: project "default", so `destroy /` passed the typo guard and named it.
    with pytest.raises(GitopsNodesError, match="no letter or digit to name a project after"):
        project_name(tmp_path / "___")
    assert project_name(tmp_path / "My Models_v2") == "my-models-v2"


def test_a_saved_plan_is_applied_to_its_project_whatever_its_folder_is_called(
    saved: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A folder with no letter or digit names no project, but the plan names its own: apply
    # must not ask the folder (it did, and refused the plan for it).
    folder = tmp_path / "___"
    Path(saved["root"]).rename(folder)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**saved, "root": str(folder)}))

    def reached(*_: object) -> object:
        raise GitopsNodesError("the engine is next")

    monkeypatch.setattr(cli, "_runtime", reached)
    assert main(["apply", str(path), "--state-dir", str(tmp_path / "state")]) == 1
    assert capsys.readouterr().err == "error: the engine is next\n"
