"""`plan` shows the YAML files the load left out, and why, next to what it would do: a file
that stopped being spec is visible beside the destroys it causes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gitops_nodes.statedir import StateDir

NODE = """\
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: web}
spec:
  image: {name: "busybox:1", port: 8080}
"""


def _plan(
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


def test_plan_lists_the_files_it_left_out(tmp_path: Path, state: StateDir, project: str) -> None:
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "web.yaml").write_text(NODE)
    typo = NODE.replace("apiVersion: gitops-nodes/v1\n", "").replace("kind: Node", "kind: Nod")
    (root / "old.yaml").write_text(typo.replace("web", "old"))
    (root / "data" / "rows.yaml").write_text("- [1, 2]\n")
    (root / ".gitops-nodes-ignore").write_text("data/\n")

    text = _plan(root, state, project)
    assert text.returncode == 0, text.stderr
    assert "Plan: 1 to add" in text.stdout
    assert (
        "Not read as spec (2 paths):\n"
        "  data/: matched by .gitops-nodes-ignore line 1 (data/)\n"
        "  old.yaml: kind 'Nod' is neither Node nor Alias, and no apiVersion: gitops-nodes/v1\n"
    ) in text.stdout

    machine = _plan(root, state, project, "--json")
    assert machine.returncode == 0, machine.stderr
    assert json.loads(machine.stdout)["ignoredFiles"] == [
        {"path": "data/", "reason": "matched by .gitops-nodes-ignore line 1 (data/)"},
        {
            "path": "old.yaml",
            "reason": "kind 'Nod' is neither Node nor Alias, and no apiVersion: gitops-nodes/v1",
        },
    ]
