"""Notebook nodes and checkpoints without Docker: a cell found by tag or id as the request
code, a checkpoint's header of versions, and plan's warnings when the image would differ."""

from __future__ import annotations

import json
import pickle
import platform
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from gitops_nodes.checkpoint import requirement_warnings, save, version_warnings
from gitops_nodes.pynode.checkpoints import header_of, make_header
from gitops_nodes.pynode.errors import PrepareError
from gitops_nodes.pynode.node import load_checkpoint
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import load_spec


def notebook(cells: Sequence[tuple[str, list[str], str | None]]) -> str:
    """nbformat 4 JSON of code cells given as (source, tags, id)."""
    return json.dumps(
        {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {},
            "cells": [
                {
                    "cell_type": "code",
                    "id": cell_id or f"cell-{index}",
                    "metadata": {"tags": tags},
                    "source": source.splitlines(keepends=True),
                    "outputs": [],
                    "execution_count": None,
                }
                for index, (source, tags, cell_id) in enumerate(cells)
            ],
        }
    )


def spec(cell: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: gitops-nodes/v1
        kind: Node
        metadata: {{name: scorer}}
        spec:
          python:
            notebook: analysis.ipynb
            cell: {cell}
            inputs: {{features: "list[float]"}}
            outputs: {{total: float}}
        """
    )


CELLS = [
    ("def square(x):\n    return x * x\n", [], None),
    ("features = [1.0, 2.0]\n", ["example"], None),
    ("total = sum(square(x) for x in features)\n", ["predict"], "the-code"),
]


@pytest.mark.parametrize("cell", ["predict", "the-code"])
def test_the_request_code_is_the_cell_with_that_tag_or_id(tmp_path: Path, cell: str) -> None:
    (tmp_path / "analysis.ipynb").write_text(notebook(CELLS))
    (tmp_path / "spec.yaml").write_text(spec(cell))

    node = load_spec(tmp_path).nodes["scorer"]

    assert node.build is not None and node.build.python is not None
    assert node.build.python.code_text == "total = sum(square(x) for x in features)\n"
    assert json.loads(node.build.python.config)["code"] == f"code/analysis.ipynb.{cell}.py"


def test_a_notebook_without_the_tag_fails_at_the_cell_field(tmp_path: Path) -> None:
    (tmp_path / "analysis.ipynb").write_text(notebook(CELLS))
    (tmp_path / "spec.yaml").write_text(spec("serve"))

    with pytest.raises(SpecErrors) as caught:
        load_spec(tmp_path)

    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.field) == ("spec.yaml", 7, "spec.python.cell")
    assert "no code cell is tagged or has the id 'serve'" in problem.message
    assert "its tags: example, predict" in problem.message


def test_a_cell_that_never_sets_an_output_fails_at_the_cell_field(tmp_path: Path) -> None:
    (tmp_path / "analysis.ipynb").write_text(notebook(CELLS))
    (tmp_path / "spec.yaml").write_text(spec("example"))

    with pytest.raises(SpecErrors) as caught:
        load_spec(tmp_path)

    (problem,) = caught.value.problems
    assert problem.field == "spec.python.cell"
    assert "cell 'example' of analysis.ipynb never mentions" in problem.message, problem


def test_magics_in_the_cell_are_refused(tmp_path: Path) -> None:
    cells = [("%time total = sum(features)\n", ["predict"], None)]
    (tmp_path / "analysis.ipynb").write_text(notebook(cells))
    (tmp_path / "spec.yaml").write_text(spec("predict"))

    with pytest.raises(SpecErrors, match="IPython magics"):
        load_spec(tmp_path)


def test_code_and_notebook_together_is_an_error_at_code(tmp_path: Path) -> None:
    (tmp_path / "analysis.ipynb").write_text(notebook(CELLS))
    (tmp_path / "p.py").write_text("total = 1.0\n")
    text = spec("predict").replace(
        "notebook: analysis.ipynb", "notebook: analysis.ipynb\n    code: p.py"
    )
    (tmp_path / "spec.yaml").write_text(text)

    with pytest.raises(SpecErrors) as caught:
        load_spec(tmp_path)
    (problem,) = caught.value.problems
    assert problem.field == "spec.python.code" and "exactly one of 'code'" in problem.message


class Doubler:
    def __call__(self, value: float) -> float:
        return value * 2


def test_save_writes_a_header_of_versions_and_the_state_loads(tmp_path: Path) -> None:
    path = save(tmp_path / "state.pkl", doubler=Doubler(), species=["a", "b"])

    header = header_of(str(path))
    assert header is not None and header["python"] == platform.python_version()
    assert "cloudpickle" not in header["packages"]  # nothing in the state needs it here
    state = load_checkpoint(path)
    assert state["species"] == ["a", "b"] and state["doubler"](2) == 4


def test_a_plain_pickle_has_no_header_and_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0]}))

    assert header_of(str(path)) is None
    assert load_checkpoint(path) == {"weights": [1.0]}


def test_versions_that_differ_from_the_nodes_packages_are_warnings() -> None:
    header = make_header("3.12.1", {"scikit-learn": "1.5.2", "numpy": "2.1.0", "cloudpickle": "3"})
    packages = ("scikit-learn==1.5.2", "numpy==2.4.6")

    assert version_warnings(header, packages) == [
        "made with Python 3.12.1, the image has Python 3.11",
        "made with cloudpickle 3, which the node's packages do not list",
        "made with numpy 2.1.0, the image gets numpy==2.4.6",
    ]
    assert version_warnings(make_header("3.11.7", {"numpy": "2.4.6"}), packages) == []
    assert requirement_warnings(("mlflow==3.1.0",), ("mlflow-skinny==3.1.0",)) == []


def test_a_checkpoint_that_fails_to_load_names_the_versions_it_was_made_with(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.pkl"
    header = make_header("3.11.7", {"no-such-dist-here": "9.9"})
    with path.open("wb") as file:
        pickle.dump(header, file)
        file.write(b"cnot_a_module_here\nThing\n.")  # a GLOBAL whose module is missing

    with pytest.raises(PrepareError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "ModuleNotFoundError" in message
    assert "made with no-such-dist-here 9.9 (here not installed)" in message, message


def test_plan_warns_when_the_image_would_load_the_checkpoint_with_other_versions(
    tmp_path: Path,
) -> None:
    from gitops_nodes.live import LiveState
    from gitops_nodes.plan import make_plan
    from gitops_nodes.render import render_text

    (tmp_path / "analysis.ipynb").write_text(notebook(CELLS))
    with (tmp_path / "state.pkl").open("wb") as file:
        pickle.dump(make_header("3.11.7", {"numpy": "2.1.0"}), file)
        pickle.dump({"unused": 1}, file)
    text = spec("predict") + '    checkpoint: state.pkl\n    packages: ["numpy==2.4.6"]\n'
    (tmp_path / "spec.yaml").write_text(text)

    desired = load_spec(tmp_path)
    plan = make_plan("p", desired, LiveState(project="p", instances=(), images=frozenset()))

    warning = "node scorer: its checkpoint was made with numpy 2.1.0, the image gets numpy==2.4.6"
    assert plan.warnings == (warning,)
    assert f"Warnings:\n  ! {warning}\n" in render_text(plan.to_json())
