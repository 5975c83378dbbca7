"""Access control in the spec: the `access` section, resolving keys, the plan, and the table.

Keys come from the environment (monkeypatched here) or from files outside the repository;
every test that sees a key also checks that no message, plan or table file contains it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from balancer.table import (
    FORMAT,
    FORMAT_WITH_ACCESS,
    AccessKey,
    AccessRule,
    AliasEntry,
    Endpoint,
    HealthSettings,
    NodeEntry,
    RoutingTable,
    TableError,
    read_table,
    write_table,
)
from gitops_nodes.cli import main
from gitops_nodes.diff import Action
from gitops_nodes.live import LiveInstance, LiveState
from gitops_nodes.plan import Plan, Step, make_plan
from gitops_nodes.render import render_text
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import SpecLoader, load_spec
from gitops_nodes.spec.state import DesiredState

WriteRepo = Callable[[dict[str, str]], Path]
CI_KEY = "ci-key-0123456789abcdef"
ANALYST_KEY = "analyst-key-fedcba9876543210"
PROJECT = "proj"

# Line numbers matter: the access section of NODE starts at line 8.
NODE = """\
apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: web
spec:
  image: {name: busybox, port: 8080}
  access:
ACCESS"""
ALIAS = """\
apiVersion: gitops-nodes/v1
kind: Alias
metadata:
  name: front
spec:
  nodes: [{node: web}]
ACCESS"""


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _node(access: str) -> str:
    return NODE.replace("ACCESS", access)


def _problems(write_repo: WriteRepo, files: dict[str, str]) -> list[str]:
    with pytest.raises(SpecErrors) as caught:
        load_spec(write_repo(files))
    return [str(problem) for problem in caught.value.problems]


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """CI_API_KEY in the environment, and the analyst's key in a file outside the repo."""
    monkeypatch.setenv("CI_API_KEY", CI_KEY)
    secret = tmp_path / "secrets" / "analyst.key"
    secret.parent.mkdir()
    secret.write_text(ANALYST_KEY + "\n")  # files end in a newline; it is not part of the key
    return secret


# --- a good spec -----------------------------------------------------------------------------


def test_keys_resolve_to_digests_from_env_and_file(write_repo: WriteRepo, keys: Path) -> None:
    access = (
        "    keys:\n"
        "      - {name: ci, fromEnv: CI_API_KEY}\n"
        f"      - {{name: analyst, fromFile: {keys}}}\n"
        "    folders: [b1g0123456789abcdefgh]\n"
    )
    state = load_spec(
        write_repo(
            {
                "web.yaml": _node(access),
                "front.yaml": ALIAS.replace("ACCESS", "  access:\n" + access),
            }
        )
    )

    expected = AccessRule(
        (AccessKey("ci", _sha(CI_KEY)), AccessKey("analyst", _sha(ANALYST_KEY))),
        ("b1g0123456789abcdefgh",),
    )
    assert state.nodes["web"].access == expected
    assert state.aliases["front"].access == expected


def test_a_target_without_access_is_public(write_repo: WriteRepo) -> None:
    state = load_spec(write_repo({"web.yaml": NODE.replace("  access:\nACCESS", "")}))
    assert state.nodes["web"].access is None


def test_keys_are_read_on_every_load_so_a_rotated_key_is_noticed(
    write_repo: WriteRepo, keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_repo({"web.yaml": _node("    keys: [{name: ci, fromEnv: CI_API_KEY}]\n")})
    loader = SpecLoader()  # caches files by content: the key must not be cached with them
    before = loader.load(root)
    monkeypatch.setenv("CI_API_KEY", "rotated-" + CI_KEY)
    after = loader.load(root)

    assert before.nodes["web"].access != after.nodes["web"].access
    assert after.nodes["web"].access == AccessRule((AccessKey("ci", _sha("rotated-" + CI_KEY)),))
    assert before.digest() != after.digest()  # a saved plan made with the old key is stale


def test_status_loads_the_spec_without_the_keys(
    write_repo: WriteRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI_API_KEY", raising=False)
    root = write_repo({"web.yaml": _node("    keys: [{name: ci, fromEnv: CI_API_KEY}]\n")})
    state = load_spec(root, read_keys=False)  # what `gitops-nodes status REPO` does
    assert state.nodes["web"].access is None
    with pytest.raises(SpecErrors):
        load_spec(root)


# --- a bad spec: every problem with its file, line, column and field -------------------------

BAD_ACCESS = {
    "both sources": (
        "    keys:\n      - {name: ci, fromEnv: CI_API_KEY, fromFile: /run/secrets/ci}\n",
        "web.yaml:9:9: spec.access.keys[0]: expected exactly one of 'fromEnv' (an environment "
        "variable) or 'fromFile' (a file outside the repository) holding the key",
    ),
    "no source": (
        "    keys:\n      - {name: ci}\n",
        "web.yaml:9:9: spec.access.keys[0]: expected exactly one of 'fromEnv' (an environment "
        "variable) or 'fromFile' (a file outside the repository) holding the key",
    ),
    "no keys": (
        "    keys: []\n",
        "web.yaml:8:11: spec.access.keys: expected at least 1 item(s)",
    ),
    "folders without keys": (
        "    folders: [b1g0123]\n",
        "web.yaml:8:5: spec.access.keys: required field is missing",
    ),
    "a relative key file": (
        "    keys: [{name: ci, fromFile: secrets/ci.key}]\n",
        "web.yaml:8:33: spec.access.keys[0].fromFile: expected the absolute path of a file "
        "holding the key, outside the repository",
    ),
    "a name twice": (
        "    keys:\n      - {name: ci, fromEnv: A}\n      - {name: ci, fromEnv: B}\n",
        "web.yaml:9:7: spec.access.keys: expected each key name once, ci listed more than once",
    ),
    "a bad folder id": (
        "    keys: [{name: ci, fromEnv: CI_API_KEY}]\n    folders: ['b1g 01']\n",
        "web.yaml:9:15: spec.access.folders[0]: expected a folder id: letters, digits, '.', '_' "
        "and '-', at most 64",
    ),
    "an unknown field": (
        "    keys: [{name: ci, fromEnv: CI_API_KEY}]\n    users: [bob]\n",
        "web.yaml:9:5: spec.access.users: unknown field; expected one of: keys, folders",
    ),
}


@pytest.mark.parametrize(("access", "expected"), BAD_ACCESS.values(), ids=BAD_ACCESS.keys())
def test_a_bad_access_section_is_reported_exactly(
    write_repo: WriteRepo, keys: Path, access: str, expected: str
) -> None:
    assert _problems(write_repo, {"web.yaml": _node(access)}) == [expected]


def test_a_key_written_into_the_spec_is_refused_without_repeating_it(
    write_repo: WriteRepo,
) -> None:
    pasted = "sk-live-0123456789abcdef0123"
    problems = _problems(
        write_repo,
        {
            "web.yaml": _node(f"    keys:\n      - {{name: ci, key: {pasted}}}\n"),
            "front.yaml": ALIAS.replace(
                "ACCESS", f"  access:\n    keys: [{{name: ci, fromEnv: {pasted}}}]\n"
            ),
        },
    )
    assert problems == [
        "front.yaml:8:32: spec.access.keys[0].fromEnv: expected the name of an environment "
        "variable holding the key: letters, digits and '_'",
        "web.yaml:9:9: spec.access.keys[0]: expected 'fromEnv' or 'fromFile' naming where the "
        "key is: a key itself never goes into the spec",
    ]
    assert not any(pasted in problem for problem in problems)


def test_nothing_written_under_access_is_repeated_in_an_error(write_repo: WriteRepo) -> None:
    pasted = "sk-live-0123456789abcdef0123"
    problems = _problems(
        write_repo,
        {
            "web.yaml": _node(f"    keys: [{pasted}]\n"),
            "front.yaml": ALIAS.replace(
                "ACCESS", f"  access:\n    keys: [{{name: {pasted.upper()}, fromEnv: CI}}]\n"
            ),
        },
    )
    assert problems == [
        "front.yaml:8:19: spec.access.keys[0].name: expected a DNS label: lowercase letters, "
        "digits and '-', starting and ending with a letter or digit, at most 63 characters",
        "web.yaml:8:12: spec.access.keys[0]: expected a mapping",
    ]


def test_a_key_file_inside_the_repository_is_refused(write_repo: WriteRepo) -> None:
    root = write_repo({"keys/ci.key": CI_KEY})
    problems = _problems(
        write_repo,
        {"web.yaml": _node(f"    keys: [{{name: ci, fromFile: {root / 'keys' / 'ci.key'}}}]\n")},
    )
    assert problems == [
        "web.yaml:8:33: spec.access.keys[0].fromFile: expected a file outside the repository: "
        "keys are never committed"
    ]


def test_keys_that_cannot_be_read_are_spec_errors_at_their_source(
    write_repo: WriteRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNSET_KEY", raising=False)
    monkeypatch.setenv("EMPTY_KEY", "  ")
    monkeypatch.setenv("SHORT_KEY", "short-key")
    monkeypatch.setenv("SPACED_KEY", "a key with spaces in it")
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    access = (
        "    keys:\n"
        "      - {name: a, fromEnv: UNSET_KEY}\n"  # line 9
        "      - {name: b, fromEnv: EMPTY_KEY}\n"
        "      - {name: c, fromEnv: SHORT_KEY}\n"
        "      - {name: d, fromEnv: SPACED_KEY}\n"
        f"      - {{name: e, fromFile: {tmp_path / 'missing.key'}}}\n"
        f"      - {{name: f, fromFile: {empty}}}\n"
    )
    problems = _problems(write_repo, {"web.yaml": _node(access)})

    assert problems == [
        "web.yaml:9:28: spec.access.keys[0].fromEnv: the environment variable UNSET_KEY is not "
        "set; set it to the key where gitops-nodes runs",
        "web.yaml:10:28: spec.access.keys[1].fromEnv: the environment variable EMPTY_KEY is "
        "empty; expected a key",
        "web.yaml:11:28: spec.access.keys[2].fromEnv: the environment variable SHORT_KEY: "
        "expected a key of at least 16 characters, it has fewer",
        "web.yaml:12:28: spec.access.keys[3].fromEnv: the environment variable SPACED_KEY: "
        "expected a key of printable ASCII characters without spaces",
        f"web.yaml:13:29: spec.access.keys[4].fromFile: cannot read the key file "
        f"{tmp_path / 'missing.key'}: No such file or directory",
        f"web.yaml:14:29: spec.access.keys[5].fromFile: the key file {empty} is empty; "
        "expected a key",
    ]
    assert not any("short-key" in p or "with spaces" in p for p in problems)


def test_validate_and_plan_stop_on_an_unset_key_before_touching_docker(
    write_repo: WriteRepo,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("CI_API_KEY", raising=False)
    root = write_repo({"web.yaml": _node("    keys: [{name: ci, fromEnv: CI_API_KEY}]\n")})
    expected = (
        "web.yaml:8:32: spec.access.keys[0].fromEnv: the environment variable CI_API_KEY is not "
        "set; set it to the key where gitops-nodes runs"
    )
    for command in (["validate", str(root)], ["plan", str(root), "--state-dir", str(tmp_path)]):
        assert main(command) == 1
        assert expected in capsys.readouterr().err

    monkeypatch.setenv("CI_API_KEY", CI_KEY)
    assert main(["validate", str(root)]) == 0
    assert CI_KEY not in capsys.readouterr().out


# --- plans -------------------------------------------------------------------------------------


def _published(state: DesiredState, *, with_access: bool) -> LiveState:
    """The live state right after applying state (without its access rules, if asked)."""
    web = state.nodes["web"]
    instance = LiveInstance(
        name="proj-web-0",
        node="web",
        index=0,
        spec_hash=web.spec_hash,
        config=web.config,
        state="running",
        port=30000,
    )
    nodes = {
        "web": NodeEntry(
            (Endpoint(instance.name, "127.0.0.1", 30000),),
            web.min_healthy,
            web.health,
            access=web.access if with_access else None,
        )
    }
    aliases = {
        name: AliasEntry(alias.routes, alias.affinity_header, alias.access if with_access else None)
        for name, alias in state.aliases.items()
    }
    table = RoutingTable(3, MappingProxyType(nodes), MappingProxyType(aliases))
    return LiveState(PROJECT, (instance,), frozenset(), table)


def _shown(plan: Plan) -> dict[str, dict[str, tuple[object, object]]]:
    """Each change's fields as `plan --json` shows them: {"Node web": {field: (before, after)}}."""
    shown = json.loads(json.dumps(plan.to_json()))
    return {
        f"{c['kind']} {c['name']}": {f["field"]: (f["before"], f["after"]) for f in c["fields"]}
        for c in shown["changes"]
    }


PRIVATE = {
    "web.yaml": _node("    keys: [{name: ci, fromEnv: CI_API_KEY}]\n"),
    "front.yaml": ALIAS.replace(
        "ACCESS", "  access:\n    keys: [{name: ci, fromEnv: CI_API_KEY}]\n"
    ),
}


def test_making_targets_private_is_an_in_place_update_that_shows_names_only(
    write_repo: WriteRepo, keys: Path
) -> None:
    state = load_spec(write_repo(PRIVATE))
    plan = make_plan(PROJECT, state, _published(state, with_access=False))

    (node,) = plan.diff.nodes
    assert (node.action, node.reason, node.instances) == (Action.UPDATE, "its access changed", ())
    assert _shown(plan)["Node web"] == {
        "access.keys": (None, ["ci"]),
        "access.keys.ci": (None, "(sensitive value)"),
    }
    assert not any(f.forces_replacement for f in node.fields)
    (alias,) = plan.diff.aliases
    assert (alias.action, alias.reason) == (Action.UPDATE, "its access changed")
    assert sorted(s.id for s in plan.steps()) == ["publish alias front", "publish node web"]
    assert {s.step for s in plan.steps()} == {Step.PUBLISH}

    text = render_text(plan.to_json())
    assert '+ access.keys.ci = "(sensitive value)"' in text
    everything = text + json.dumps(plan.to_json())
    assert CI_KEY not in everything and _sha(CI_KEY) not in everything


def test_a_rotated_key_is_a_change_and_an_unchanged_one_is_none(
    write_repo: WriteRepo, keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_repo(PRIVATE)
    state = load_spec(root)
    live = _published(state, with_access=True)
    assert make_plan(PROJECT, state, live).empty

    monkeypatch.setenv("CI_API_KEY", "rotated-" + CI_KEY)
    plan = make_plan(PROJECT, load_spec(root), live)
    assert _shown(plan) == {
        "Node web": {"access.keys.ci": ("(sensitive value)", "(sensitive value)")},
        "Alias front": {"access.keys.ci": ("(sensitive value)", "(sensitive value)")},
    }
    assert "rotated-" not in render_text(plan.to_json())


def test_making_a_target_public_again_drops_its_access(write_repo: WriteRepo, keys: Path) -> None:
    live = _published(load_spec(write_repo(PRIVATE)), with_access=True)
    public = load_spec(
        write_repo(
            {
                "web.yaml": NODE.replace("  access:\nACCESS", ""),
                "front.yaml": ALIAS.replace("ACCESS", ""),
            }
        )
    )
    plan = make_plan(PROJECT, public, live)
    assert [(c.action, c.reason) for c in plan.diff.nodes] == [
        (Action.UPDATE, "its access changed")
    ]
    assert _shown(plan)["Node web"] == {
        "access.keys": (["ci"], None),
        "access.keys.ci": ("(sensitive value)", None),
    }
    assert [c.reason for c in plan.diff.aliases] == ["its access changed"]


# --- the routing table -------------------------------------------------------------------------


def _table(access: AccessRule | None) -> RoutingTable:
    health = HealthSettings(path="/healthz")
    node = NodeEntry((Endpoint("web-0", "127.0.0.1", 30000),), 1, health, access=access)
    alias = AliasEntry((("web", 100),), None, access)
    return RoutingTable(4, MappingProxyType({"web": node}), MappingProxyType({"front": alias}))


def test_the_table_carries_digests_and_private_tables_are_a_newer_format(tmp_path: Path) -> None:
    rule = AccessRule((AccessKey("ci", _sha(CI_KEY)),), ("b1g0123",))
    path = tmp_path / "routing-table.json"

    write_table(path, _table(rule))
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT_WITH_ACCESS  # older balancers refuse it, never serve it open
    assert data["aliases"]["front"]["access"] == {
        "keys": [{"name": "ci", "sha256": _sha(CI_KEY)}],
        "folders": ["b1g0123"],
    }
    assert CI_KEY not in path.read_text()
    assert read_table(path) == _table(rule)

    write_table(path, _table(None))
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and "access" not in data["nodes"]["web"]
    assert read_table(path) == _table(None)


@pytest.mark.parametrize(
    "access",
    [
        {"keys": []},
        {"keys": [{"name": "ci", "sha256": "not-hex"}]},
        {"keys": [{"name": "ci"}]},
        {"keys": [{"name": "ci\r\nx-injected: 1", "sha256": "0" * 64}]},
        {"folders": ["b1g"]},
    ],
)
def test_a_malformed_access_rule_refuses_the_whole_table(access: object) -> None:
    data = _table(None).to_json()
    data["format"] = FORMAT_WITH_ACCESS
    data["aliases"]["front"]["access"] = access
    with pytest.raises(TableError):
        RoutingTable.from_json(data)


def test_the_digest_of_a_state_changes_with_its_access(write_repo: WriteRepo, keys: Path) -> None:
    private = load_spec(write_repo(PRIVATE))
    public = replace(
        private,
        aliases=MappingProxyType({n: replace(a, access=None) for n, a in private.aliases.items()}),
    )
    assert private.digest() != public.digest()


def test_a_folder_added_to_a_private_alias_is_a_change(write_repo: WriteRepo, keys: Path) -> None:
    live = _published(load_spec(write_repo(PRIVATE)), with_access=True)
    folders = "  access:\n    keys: [{name: ci, fromEnv: CI_API_KEY}]\n    folders: [b1g0123]\n"
    state = load_spec(write_repo({**PRIVATE, "front.yaml": ALIAS.replace("ACCESS", folders)}))
    plan = make_plan(PROJECT, state, live)
    assert _shown(plan) == {"Alias front": {"access.folders": (None, ["b1g0123"])}}
    assert [s.id for s in plan.steps()] == ["publish alias front"]
