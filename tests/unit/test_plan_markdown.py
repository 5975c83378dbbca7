"""`plan --format markdown`: the plan as a pull-request comment, checked against golden files
(GITOPS_NODES_UPDATE_GOLDEN=1 rewrites them after a deliberate change of the output)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.live import LiveState
from gitops_nodes.plan import make_plan
from gitops_nodes.render import COMMENT_LIMIT, render_markdown, render_text

from .memory_world import PROJECT, World
from .spec_documents import alias, load, node

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("GITOPS_NODES_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs; see the diff above"


@pytest.fixture
def mixed_plan(tmp_path: Path) -> dict[str, Any]:
    """A live project (web x2, old, api; alias front) and a spec that replaces web, scales
    api, destroys old, creates scorer and moves front's weights: every action at once."""
    world = World(tmp_path)
    world.apply(
        load(
            tmp_path / "before",
            node("web", instances=2),
            node("old"),
            node("api"),
            alias("front", ("web", 90), ("old", 10)),
        )
    )
    after = load(
        tmp_path / "after",
        node("web", version="2", instances=2),
        node("api", instances=2),
        node("scorer"),
        alias("front", ("web", 50), ("scorer", 50)),
    )
    return make_plan(PROJECT, after, world.live()).to_json()


def test_every_action_renders_as_the_golden_comment(mixed_plan: dict[str, Any]) -> None:
    text = render_markdown(mixed_plan)

    check_golden("plan_mixed.md", text)
    assert text.splitlines()[0] == (
        "**Plan:** 2 to add, 2 to change, 2 to destroy. (gitops-nodes project `mem`)"
    )
    assert text.count("<details>") == text.count("</details>") == 5
    assert "— <code>env.VERSION</code> forces replacement</summary>" in text
    assert '~ env.VERSION = "1" -> "2" # forces replacement' in text


def test_no_changes_is_one_line(tmp_path: Path) -> None:
    plan = make_plan(PROJECT, load(tmp_path / "repo"), LiveState(PROJECT)).to_json()

    check_golden("plan_empty.md", render_markdown(plan))


def test_a_plan_past_the_limit_keeps_the_summary_and_says_what_it_left_out(
    mixed_plan: dict[str, Any],
) -> None:
    text = render_markdown(mixed_plan, limit=1800)

    check_golden("plan_truncated.md", text)
    assert len(text) <= 1800
    assert text.startswith("**Plan:** 2 to add, 2 to change, 2 to destroy.")
    assert "of 5 changes are shown above" in text
    assert text.count("<details>") == text.count("</details>") < 5


def test_a_huge_plan_fits_a_github_comment_with_room_for_the_ci_title(tmp_path: Path) -> None:
    spec = load(tmp_path / "repo", *(node(f"n{i:04d}") for i in range(120)))
    plan = make_plan(PROJECT, spec, LiveState(PROJECT)).to_json()
    assert len(render_markdown(plan, limit=10**9)) > COMMENT_LIMIT  # the case is real

    text = render_markdown(plan)

    assert len(text) <= COMMENT_LIMIT - 1000
    assert text.startswith("**Plan:** 120 to add, 0 to change, 0 to destroy.")
    assert "changes are shown above" in text.splitlines()[-1]
    assert text.count("<details>") == text.count("</details>")


def test_backticks_in_a_value_do_not_end_the_code_block(tmp_path: Path) -> None:
    doc = node("web")
    doc["spec"]["env"] = {"NOTE": "```` end"}
    plan = make_plan(PROJECT, load(tmp_path / "repo", doc), LiveState(PROJECT)).to_json()

    text = render_markdown(plan)

    assert "\n`````diff\n" in text
    assert "\n`````\n\n</details>" in text


def test_a_sensitive_field_is_masked_in_the_text_and_the_markdown_alike(
    mixed_plan: dict[str, Any],
) -> None:
    """One function (render.shown_value) formats every value the plan shows, so a field
    the plan marks sensitive is masked in every rendering, whatever its values are."""
    plan = copy.deepcopy(mixed_plan)
    fields = [
        f for c in plan["changes"] for f in c.get("fields", []) if f["field"] == "env.VERSION"
    ]
    assert fields, "the mixed plan changes env.VERSION"
    for item in fields:
        item["sensitive"] = True

    text, markdown = render_text(plan), render_markdown(plan)

    for output in (text, markdown):
        assert '"2"' not in output
        shown = 'env.VERSION = "(sensitive value)" -> "(sensitive value)" # forces replacement'
        assert shown in output


def test_the_left_alone_containers_and_ignored_files_get_sections_too(
    mixed_plan: dict[str, Any],
) -> None:
    plan = {
        **mixed_plan,
        "leftAlone": [
            {"instance": "mem-x-0", "node": "x", "index": 0, "owner": None, "reason": "not ours"}
        ],
        "ignoredFiles": [{"path": "data/", "reason": "matched by .gitops-nodes-ignore line 1"}],
    }

    text = render_markdown(plan)

    assert "<summary>Left alone: 1 container(s) not this state directory's</summary>" in text
    assert "container mem-x-0 (node x, instance 0): not ours" in text
    assert "<summary>Not read as spec: 1 path(s)</summary>" in text
    assert "data/: matched by .gitops-nodes-ignore line 1" in text


def test_a_truncated_plan_still_lists_the_files_not_read_when_they_fit(
    mixed_plan: dict[str, Any],
) -> None:
    plan = {**mixed_plan, "ignoredFiles": [{"path": "old.yaml", "reason": "no apiVersion"}]}

    text = render_markdown(plan, limit=2200)

    assert len(text) <= 2200
    assert "changes are shown above" in text
    assert "old.yaml: no apiVersion" in text
    assert text.index("old.yaml: no apiVersion") < text.index("changes are shown above")
