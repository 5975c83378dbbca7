"""`plan --json` and `plan --format markdown` from the real command against the real engine:
the JSON validates against schemas/plan-v1.schema.json, the markdown opens with its summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema

from gitops_nodes.statedir import StateDir

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "plan-v1.schema.json"
SPEC = """\
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: web}
spec:
  image: {name: "busybox:1", port: 8080}
  env: {NOTE: "```"}
---
apiVersion: gitops-nodes/v1
kind: Alias
metadata: {name: front}
spec:
  nodes: [{node: web, weight: 100}]
"""


def plan(
    root: Path, state: StateDir, project: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitops_nodes", "plan", str(root), "--project", project, *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "GITOPS_NODES_STATE_DIR": str(state.path.parent)},
        timeout=120,
        check=False,
    )


def test_plan_json_follows_its_schema_and_markdown_its_layout(
    tmp_path: Path, state: StateDir, project: str
) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "spec.yaml").write_text(SPEC)
    (root / "notes.yaml").write_text("kind: Nothing\n")

    machine = plan(root, state, project, "--json")
    assert machine.returncode == 0, machine.stderr
    data = json.loads(machine.stdout)
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert data["ignoredFiles"][0]["path"] == "notes.yaml"
    assert plan(root, state, project, "--format", "json").stdout == machine.stdout

    comment = plan(root, state, project, "--format", "markdown", "--detailed-exitcode")
    assert comment.returncode == 2, comment.stderr
    lines = comment.stdout.splitlines()
    assert (
        lines[0]
        == f"**Plan:** 2 to add, 0 to change, 0 to destroy. (gitops-nodes project `{project}`)"
    )
    assert comment.stdout.count("<details>") == 3  # web, front, and the file not read
    assert "<summary>Not read as spec: 1 path(s)</summary>" in comment.stdout

    both = plan(root, state, project, "--json", "--format", "markdown")
    assert both.returncode == 1
    assert "--json and --format markdown: give one of them" in both.stderr
