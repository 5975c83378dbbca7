"""The "validate and plan" block of each CI example, run as its CI runs it (bash -eo pipefail)
with the real command against the real engine: a plan with changes writes the markdown
comment and passes; an invalid spec writes its errors into the comment and fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gitops_nodes.statedir import StateDir

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "examples" / "ci"
SPEC = """\
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: web}
spec:
  image: {name: "busybox:1", port: 8080}
"""


def github_block() -> str:
    flow = yaml.safe_load((CI / "github-actions.yml").read_text())
    block = flow["jobs"]["plan"]["steps"][1]["run"]
    assert isinstance(block, str)
    return block


def gitlab_block() -> str:
    block = yaml.safe_load((CI / "gitlab-ci.yml").read_text())["plan"]["script"][0]
    assert isinstance(block, str)
    return block


def run_block(block: str, work: Path, state: StateDir, project: str) -> tuple[int, str]:
    """Run the block in work/ with this checkout's gitops-nodes first on PATH."""
    shim = work / "bin" / "gitops-nodes"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m gitops_nodes "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "SPEC_DIR": "spec",
        "GITOPS_NODES_PROJECT": project,
        "GITOPS_NODES_STATE_DIR": str(state.path.parent),
        "GITHUB_OUTPUT": str(work / "github-output"),
    }
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", block],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("which", ["github", "gitlab"])
def test_a_pull_request_with_changes_gets_the_markdown_plan(
    which: str, tmp_path: Path, state: StateDir, project: str
) -> None:
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "web.yaml").write_text(SPEC)
    block = github_block() if which == "github" else gitlab_block()

    code, output = run_block(block, tmp_path, state, project)

    assert code == 0, output
    comment = (tmp_path / "plan.md").read_text()
    assert comment.startswith("**Plan:** 1 to add, 0 to change, 0 to destroy.")
    assert "<details><summary><code>+</code> Node <b>web</b>" in comment
    status = (
        (tmp_path / "github-output").read_text()
        if which == "github"
        else (tmp_path / "status.txt").read_text()
    )
    assert status.strip().endswith("2")  # changes present: the comment is posted, the job passes


@pytest.mark.parametrize("which", ["github", "gitlab"])
def test_an_invalid_spec_puts_its_errors_in_the_comment(
    which: str, tmp_path: Path, state: StateDir, project: str
) -> None:
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "web.yaml").write_text(SPEC.replace("port: 8080", "port: eighty"))
    block = github_block() if which == "github" else gitlab_block()

    code, output = run_block(block, tmp_path, state, project)

    assert code == 0, output  # the block records the failure; a later step fails the job
    comment = (tmp_path / "plan.md").read_text()
    assert comment.startswith("**The spec is not valid.**\n\n~~~text\n")
    assert "web.yaml" in comment and "port" in comment
    status = (
        (tmp_path / "github-output").read_text()
        if which == "github"
        else (tmp_path / "status.txt").read_text()
    )
    assert status.strip().endswith("1")
