"""A node from a notebook on the real engine: `gitops-nodes checkpoint` runs the notebook in
a kernel and saves its variables (a class and a function defined in it travel by value), and
the node made from its tagged cell answers with them."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

from gitops_nodes.pynode.checkpoints import header_of
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir
from tests.unit.test_notebook_nodes import notebook

from .helpers import apply, table
from .test_python_nodes import call

CELLS = [
    ("def square(x):\n    return x * x\n", [], None),
    (
        "class Scaler:\n"
        "    def __init__(self, k):\n"
        "        self.k = k\n"
        "    def __call__(self, values):\n"
        "        return [self.k * square(v) for v in values]\n",
        [],
        None,
    ),
    ("scaler = Scaler(3)\nfeatures = [1.0, 2.0]\n", ["example"], None),
    ("scores = scaler(features)\ntotal = sum(scores)\n", ["predict"], None),
]


def test_a_checkpoint_from_a_notebook_serves_its_tagged_cell(
    tmp_path: Path, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "analysis.ipynb").write_text(notebook(CELLS))
    cloudpickle = importlib.metadata.version("cloudpickle")
    (root / "spec.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: gitops-nodes/v1
            kind: Node
            metadata: {{name: scorer}}
            spec:
              python:
                notebook: analysis.ipynb
                cell: predict
                checkpoint: state.pkl
                inputs: {{features: "list[float]"}}
                outputs: {{scores: "list[float]", total: float}}
                packages: ["cloudpickle=={cloudpickle}"]
              healthCheck: {{path: /healthz, interval: 200ms, startTimeout: 60s}}
            """
        )
    )
    made = subprocess.run(
        [sys.executable, "-m", "gitops_nodes", "checkpoint", str(root / "analysis.ipynb"),
         "--vars", "scaler", "--cell", "predict", "-o", str(root / "state.pkl")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "saved scaler" in made.stdout
    header = header_of(str(root / "state.pkl"))
    assert header is not None and header["packages"] == {"cloudpickle": cloudpickle}

    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    (endpoint,) = table(state).nodes["scorer"].endpoints
    assert call(endpoint.port, {"features": [1, 2, 4]}) == (
        200,
        {"scores": [3.0, 12.0, 48.0], "total": 63.0},
    )


def test_checkpoint_names_a_cell_the_notebook_does_not_have(tmp_path: Path) -> None:
    (tmp_path / "analysis.ipynb").write_text(notebook(CELLS))
    made = subprocess.run(
        [sys.executable, "-m", "gitops_nodes", "checkpoint", str(tmp_path / "analysis.ipynb"),
         "--vars", "scaler", "--cell", "serve", "-o", str(tmp_path / "state.pkl")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert made.returncode == 1
    assert "no code cell is tagged or has the id 'serve'" in made.stderr, made.stderr
    assert not (tmp_path / "state.pkl").exists()
