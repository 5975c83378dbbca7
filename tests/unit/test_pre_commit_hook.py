"""The pre-commit hook that spec repositories use runs `gitops-nodes validate` as declared:
pre-commit accepts the manifest, and the command it runs checks every document of the spec,
without the access keys a developer's machine does not have when asked to."""

from __future__ import annotations

import shlex
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from pre_commit.clientlib import load_manifest

from gitops_nodes.cli import main
from gitops_nodes.spec.load import load_spec

ROOT = Path(__file__).resolve().parents[2]
NODE = """
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: web}
spec:
  image: {name: busybox, port: 8080}
"""
PRIVATE_ALIAS = """
apiVersion: gitops-nodes/v1
kind: Alias
metadata: {name: web}
spec:
  nodes: [{node: web}]
  access:
    keys: [{name: ci, fromEnv: GITOPS_NODES_TEST_UNSET_KEY}]
"""


def _hook() -> dict[str, object]:
    hooks = load_manifest(ROOT / ".pre-commit-hooks.yaml")  # pre-commit's own check
    assert [hook["id"] for hook in hooks] == ["gitops-nodes-validate"]
    return dict(hooks[0])


def test_the_hook_runs_our_validate_once_per_commit() -> None:
    hook = _hook()
    assert hook["language"] == "python"  # pre-commit pip-installs this repository
    assert hook["pass_filenames"] is False  # validate reads the repository, not a file list
    program, *args = shlex.split(str(hook["entry"]))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert program in scripts
    assert args == ["validate"]


def test_the_hooks_command_validates_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    _, *args = shlex.split(str(_hook()["entry"]))
    example = load_spec(ROOT / "example-repo")
    assert main([*args, str(ROOT / "example-repo")]) == 0
    nodes, aliases = len(example.nodes), len(example.aliases)
    assert f"The spec is valid: {nodes} nodes and {aliases} aliases in" in capsys.readouterr().out


def test_skip_keys_checks_a_private_spec_where_its_keys_are_not_set(
    write_repo: Callable[[dict[str, str]], Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GITOPS_NODES_TEST_UNSET_KEY", raising=False)
    repo = write_repo({"spec.yaml": NODE + "---" + PRIVATE_ALIAS})
    assert main(["validate", str(repo)]) == 1
    assert "GITOPS_NODES_TEST_UNSET_KEY" in capsys.readouterr().err
    assert main(["validate", "--skip-keys", str(repo)]) == 0
    # Where a key is read from is still checked.
    (repo / "spec.yaml").write_text(
        NODE + "---" + PRIVATE_ALIAS.replace("fromEnv: GITOPS_NODES_TEST_UNSET_KEY", "fromEnv: 1")
    )
    assert main(["validate", "--skip-keys", str(repo)]) == 1
