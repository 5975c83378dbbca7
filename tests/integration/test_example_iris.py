"""The example repository's iris node, made from its notebook and the checkpoint that
`gitops-nodes checkpoint` saved, answers as the README says."""

from __future__ import annotations

import shutil
from pathlib import Path

from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.spec.load import load_spec
from gitops_nodes.statedir import StateDir

from .helpers import apply, table
from .test_python_nodes import call

EXAMPLE = Path(__file__).resolve().parents[2] / "example-repo"


def test_the_example_iris_node_from_its_notebook_answers(
    tmp_path: Path, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE / "models", root / "models")
    text = (EXAMPLE / "nodes" / "models.yaml").read_text()
    (root / "nodes").mkdir()
    (root / "nodes" / "models.yaml").write_text(text.split("\n---\n")[0])
    desired = load_spec(root)
    assert list(desired.nodes) == ["iris"] and desired.nodes["iris"].warnings == ()

    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    endpoint = table(state).nodes["iris"].endpoints[0]
    status, body = call(endpoint.port, {"measurements": [5.1, 3.5, 1.4, 0.2]})
    assert status == 200 and body["species_name"] == "setosa", body
    assert round(body["probability"], 2) == 0.98
    status, body = call(endpoint.port, {"measurements": [6.7, 3.0, 5.2, 2.3]})
    assert status == 200 and body["species_name"] == "virginica", body
    assert round(body["probability"], 2) == 0.92
