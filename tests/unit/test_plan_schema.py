"""`plan --json` is a stable interface: schemas/plan-v1.schema.json describes it, and the
plans gitops-nodes makes (every action, suspension, builds, containers left alone, saved
plans) validate against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gitops_nodes import workflow
from gitops_nodes.live import LiveInstance, LiveState
from gitops_nodes.plan import PLAN_FORMAT, make_plan

from .memory_world import PROJECT, World
from .spec_documents import alias, load, node

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "plan-v1.schema.json"


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def plans(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Real plans of every shape: made by make_plan against a memory engine's live state."""
    world = World(tmp_path)
    world.apply(
        load(
            tmp_path / "v1",
            node("web", instances=3, maintenanceLimit=2),
            node("old"),
            node("idle"),
            alias("front", ("web", 90), ("old", 10)),
        )
    )
    live = world.live()
    every_action = load(
        tmp_path / "v2",
        node("web", version="2", instances=3, maintenanceLimit=2),
        node("idle", suspended=True),
        node("built", image={"build": "app", "port": 8080}),
        alias("front", ("web", 50), ("built", 50)),
        files={"app/Dockerfile": "FROM busybox:1\n"},
    )
    theirs = LiveInstance("mem-x-0-1", "x", 0, "h", None, "running", 1, owner="someone-else")
    made = {
        "from nothing": make_plan(PROJECT, every_action, LiveState(PROJECT)),
        "every action": make_plan(PROJECT, every_action, live),
        "left alone": make_plan(PROJECT, every_action, LiveState(PROJECT, foreign=(theirs,))),
    }
    world.apply(every_action)
    made["no changes"] = make_plan(PROJECT, every_action, world.live())
    return {name: plan.to_json() for name, plan in made.items()}


def test_every_kind_of_plan_validates(tmp_path: Path, validator: Any) -> None:
    made = plans(tmp_path)
    every = made["every action"]
    actions = {c["action"] for c in every["changes"]}
    assert actions >= {"+", "-/+", "~"}, actions  # the case covers what it says
    assert any(c.get("transition") == "suspend" for c in every["changes"])
    assert any(c.get("maintenance") for c in every["changes"])
    assert any(c.get("build") for c in made["from nothing"]["changes"])
    assert made["left alone"]["leftAlone"]
    assert made["no changes"]["changes"] == []
    for name, plan in made.items():
        errors = [e.message for e in validator.iter_errors(plan)]
        assert errors == [], name


def test_a_saved_plan_and_plan_json_extras_validate(tmp_path: Path, validator: Any) -> None:
    plan = make_plan(PROJECT, load(tmp_path / "repo", node("web")), LiveState(PROJECT))
    saved = json.loads(workflow.saved_plan_json(plan, tmp_path / "repo", "docker", adopt=True))
    printed = {**plan.to_json(), "ignoredFiles": [{"path": "data/", "reason": "ignored"}]}

    validator.validate(saved)
    validator.validate(printed)
    assert saved["format"] == PLAN_FORMAT


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("changes", 0, "action"), "replace"),
        (("summary", "add"), -1),
        (("changes", 0, "surprise"), True),
        (("format",), "gitops-nodes/plan/v2"),
    ],
)
def test_the_schema_refuses_what_plan_never_prints(
    path: tuple[Any, ...], value: Any, tmp_path: Path, validator: Any
) -> None:
    plan = make_plan(PROJECT, load(tmp_path / "repo", node("web")), LiveState(PROJECT)).to_json()
    target: Any = plan
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value

    assert not validator.is_valid(plan)


def test_a_plan_that_changes_a_secret_validates_and_shows_no_value(
    tmp_path: Path, validator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(tmp_path)
    secret = {"TOKEN": {"fromEnv": "GNT_SCHEMA_SECRET"}}
    monkeypatch.setenv("GNT_SCHEMA_SECRET", "first-value")
    world.apply(load(tmp_path / "v1", node("web", env=secret)))
    monkeypatch.setenv("GNT_SCHEMA_SECRET", "second-value")
    desired = load(tmp_path / "v2", node("web", env=secret))

    plan = make_plan(PROJECT, desired, world.live()).to_json()

    fields = [f for c in plan["changes"] for f in c.get("fields", [])]
    assert [f["field"] for f in fields if f.get("sensitive")] == ["env.TOKEN"], fields
    validator.validate(plan)
    assert "first-value" not in json.dumps(plan) and "second-value" not in json.dumps(plan)
