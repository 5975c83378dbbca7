"""Inputs fuzzing found crashing or mislabelling the loader: each must be a spec error at its
field (file:line:col: field: message), listed with the file's other problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gitops_nodes.notebook import NotebookError, cell_code
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import load_spec, locate_problems
from gitops_nodes.spec.settings import parse_settings
from tests.files import write_files

HEAD = "apiVersion: gitops-nodes/v1\nkind: Node\nmetadata:\n  name: web\nspec:\n"
IMAGE = "  image:\n    name: nginx:1.25\n    port: 80\n"
LONG = "x" * 300  # longer than a file name may be (255 bytes): the OS says ENAMETOOLONG


def _errors(root: Path, files: dict[str, str | bytes]) -> list[str]:
    """Write files into root and load it: every problem, as validate prints it."""
    with pytest.raises(SpecErrors) as caught:
        load_spec(write_files(root, files), read_keys=False)
    return [str(problem) for problem in caught.value.problems]


# 1. An anchor defined twice is YAML the loader accepts; locating a problem composed the file
# again with PyYAML, which refuses it (ComposerError: found duplicate anchor).


def test_a_reused_anchor_does_not_stop_a_problem_being_located(tmp_path: Path) -> None:
    text = HEAD.replace("name: web", "name: &a web\n  description: &a x") + IMAGE
    text += "  instances: 0\n"
    assert _errors(tmp_path, {"n.yaml": text}) == [
        "n.yaml:10:14: spec.instances: expected a value ≥ 1, got 0"
    ]


def test_a_reused_anchor_in_the_settings_file_is_located_too() -> None:
    with pytest.raises(SpecErrors) as caught:
        parse_settings(b"runtime: &a swarm\nallowEmpty: &a x\n")
    assert [str(problem) for problem in caught.value.problems] == [
        "gitops-nodes.yaml:2:13: allowEmpty: expected true or false, got 'x'"
    ]


def test_a_document_pyyaml_cannot_compose_is_still_reported_at_its_first_line() -> None:
    # Never seen from a file the loader accepted; a position is not worth a crash though.
    data = b"a: 1\n---\nb: *nowhere\n"
    [problem] = locate_problems("s.yaml", data, [(1, ("b",), "wrong", False)], [(0, 0), (1, 5)])
    assert str(problem) == "s.yaml:2:1: b: wrong"


# 2. Lines ended by CR alone (old Mac files): YAML counts each CR as a line break.


def test_lines_ended_by_cr_alone_are_counted_as_yaml_counts_them(tmp_path: Path) -> None:
    text = "# c\n" * 3 + HEAD + IMAGE + "---\n" + HEAD.replace("web", "web2") + IMAGE
    text += "  instances: 0\n"
    errors = _errors(tmp_path, {"n.yaml": text.replace("\n", "\r").encode()})
    assert errors == ["n.yaml:21:14: spec.instances: expected a value ≥ 1, got 0"]


# 3. A python node's notebook: whatever its JSON holds, a spec error naming it (and the cell).


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"cells": [{"cell_type": "code", "id": "predict", "source": ["y = x\\n", 1]}]}',
            "cell 'predict' of nb.ipynb: expected its source as a string or a list of strings",
        ),
        (
            '{"cells": [{"cell_type": "code", "id": "predict", "source": {"a": 1}}]}',
            "cell 'predict' of nb.ipynb: expected its source as a string or a list of strings",
        ),
        ("[" * 100_000, "the notebook nb.ipynb is nested too deeply to read"),
        (
            '{"cells": [{"cell_type": "code", "id": "predict", '
            '"source": "a = 1\\ny = x # \\ud800"}]}',
            "cell 'predict' of nb.ipynb, line 2: expected Unicode text, '\\ud800' is half of a "
            "surrogate pair",
        ),
    ],
    ids=["source item not a string", "source a mapping", "nested deeply", "lone surrogate"],
)
def test_a_notebook_that_cannot_give_a_cell_is_a_notebook_error(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "nb.ipynb").write_text(content)
    with pytest.raises(NotebookError) as caught:
        cell_code(tmp_path / "nb.ipynb", "predict", "nb.ipynb")
    assert message in str(caught.value)


def test_a_cell_not_found_names_at_most_twenty_of_the_notebooks_tags(tmp_path: Path) -> None:
    # Before: 20,000 tags made one line of all of them.
    cells = [
        {"cell_type": "code", "source": "", "metadata": {"tags": [f"t{i:05}"]}}
        for i in range(20_000)
    ]
    (tmp_path / "nb.ipynb").write_text(json.dumps({"cells": cells}))
    with pytest.raises(NotebookError) as caught:
        cell_code(tmp_path / "nb.ipynb", "predict", "nb.ipynb")
    assert str(caught.value).endswith(
        "(its tags: " + ", ".join(f"t{i:05}" for i in range(20)) + " and 19980 more)"
    )


def test_a_notebook_cell_with_a_lone_surrogate_is_a_spec_error_at_cell(tmp_path: Path) -> None:
    notebook = '{"cells": [{"cell_type": "code", "id": "predict", "source": "y = x # \\ud800"}]}'
    python = "  python:\n    notebook: nb.ipynb\n    cell: predict\n"
    python += "    inputs: {x: float}\n    outputs: {y: float}\n"
    errors = _errors(tmp_path, {"nb.ipynb": notebook, "n.yaml": HEAD + python})
    assert errors == [
        "n.yaml:8:11: spec.python.cell: cell 'predict' of nb.ipynb, line 1: expected Unicode "
        "text, '\\ud800' is half of a surrogate pair"
    ]


# 4. A path too long for the OS is a problem at its field, listed with the others.


def test_paths_too_long_for_the_os_are_field_errors(tmp_path: Path) -> None:
    build = HEAD + f"  image:\n    build: {LONG}\n    port: 80\n"
    dockerfile = HEAD.replace("web", "web2") + (
        f"  image:\n    build: ctx\n    dockerfile: {LONG}\n    port: 80\n"
    )
    code = HEAD.replace("web", "py") + (
        f"  python:\n    code: {LONG}\n    inputs: {{x: float}}\n    outputs: {{y: float}}\n"
    )
    files: dict[str, str | bytes] = {
        "ctx/Dockerfile": "FROM scratch\n",
        "a.yaml": build,
        "b.yaml": dockerfile,
        "c.yaml": code,
    }
    shown = f"{LONG[:40]}...{LONG[-20:]} (300 characters)"
    assert _errors(tmp_path, files) == [
        f"a.yaml:7:12: spec.image.build: expected an existing folder, {shown} is not one in the "
        "repository: file name too long",
        f"b.yaml:8:17: spec.image.dockerfile: expected a file inside the build folder ctx, "
        f"{shown} is not one: file name too long",
        f"c.yaml:7:11: spec.python.code: expected an existing file, {shown} is not one in the "
        "repository: file name too long",
    ]


# 5 and 7. Input and output names: reported at the key, never at the code.

PYTHON = "  python:\n    code: c.py\n    inputs: {IN}\n    outputs: {y: float}\n"
NOT_A_NAME = (
    "expected a Python variable name: letters, digits and '_', not starting with a digit or "
    "'__', not a keyword"
)


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ("{class: float}", "n.yaml:8:14: spec.python.inputs.class: invalid key 'class': "),
        ("{__x: float}", "n.yaml:8:14: spec.python.inputs.__x: invalid key '__x': "),
        ("{x-y: float}", "n.yaml:8:14: spec.python.inputs.x-y: invalid key 'x-y': "),
        ("{1: float}", "n.yaml:8:5: spec.python.inputs: the key 1 is not a name: "),
        ("{null: float}", "n.yaml:8:5: spec.python.inputs: the key null is not a name: "),
    ],
)
def test_input_names_are_checked_at_their_keys(tmp_path: Path, inputs: str, expected: str) -> None:
    text = HEAD + PYTHON.replace("{IN}", inputs)
    assert _errors(tmp_path, {"c.py": "y = 1\n", "n.yaml": text}) == [expected + NOT_A_NAME]


def test_model_variable_names_are_checked_at_their_keys(tmp_path: Path) -> None:
    # Before: a pattern only, so `class` or `__x` passed and failed in the node's image.
    models = "    models:\n      class: {mlflow: {model: iris, version: 3}}\n"
    text = HEAD + PYTHON.replace("{IN}", "{x: float}") + models
    assert _errors(tmp_path, {"c.py": "y = 1\n", "n.yaml": text}) == [
        "n.yaml:11:7: spec.python.models.class: invalid key 'class': " + NOT_A_NAME
    ]


def test_a_non_string_env_key_is_the_mappings_problem(tmp_path: Path) -> None:
    text = HEAD + IMAGE + "  env:\n    true: x\n"
    [error] = _errors(tmp_path, {"n.yaml": text})
    assert error.startswith("n.yaml:9:3: spec.env: the key true is not a name: expected ")


# 6. A NUL in a path: the OS can name no such file; our message, at the field.


def test_a_nul_in_a_path_is_an_error_at_its_field(tmp_path: Path) -> None:
    nul = '"x\\0y"'
    build = HEAD + f"  image:\n    build: {nul}\n    port: 80\n"
    dockerfile = HEAD.replace("web", "web2") + (
        f"  image:\n    build: ctx\n    dockerfile: {nul}\n    port: 80\n"
    )
    code = HEAD.replace("web", "py") + (
        f"  python:\n    code: {nul}\n    files: {{a: {nul}}}\n"
        "    inputs: {x: float}\n    outputs: {y: float}\n"
    )
    key = (
        HEAD.replace("web", "web3")
        + IMAGE
        + (f"  access:\n    keys: [{{name: ci, fromFile: {nul.replace('x', '/x')}}}]\n")
    )
    files: dict[str, str | bytes] = {
        "ctx/Dockerfile": "FROM scratch\n",
        "a.yaml": build,
        "b.yaml": dockerfile,
        "c.yaml": code,
        "d.yaml": key,
    }
    said = "expected a path without NUL characters ('\\0'): no file can be named so"
    assert _errors(tmp_path, files) == [
        f"a.yaml:7:12: spec.image.build: {said}",
        f"b.yaml:8:17: spec.image.dockerfile: {said}",
        f"c.yaml:7:11: spec.python.code: {said}",
        f"c.yaml:8:16: spec.python.files.a: {said}",
        f"d.yaml:10:33: spec.access.keys[0].fromFile: {said}",
    ]


# Specs the engine could only refuse when an instance starts: refused at their field.


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            "    /run/a: {fromEnv: A}\n    /run/a-b: {fromEnv: C}\n    /run/a/b: {fromEnv: B}\n",
            "spec.secretFiles: expected files apart: /run/a is a file, so /run/a/b cannot be "
            "inside it",
        ),
        (
            "    /proc/x: {fromEnv: A}\n",
            "spec.secretFiles: expected paths outside /proc and /sys, where nothing can be "
            "mounted; got /proc/x",
        ),
    ],
    ids=["one inside another", "under /proc"],
)
def test_secret_files_the_engine_cannot_mount_are_refused(
    tmp_path: Path, files: str, message: str
) -> None:
    errors = _errors(tmp_path, {"n.yaml": HEAD + IMAGE + "  secretFiles:\n" + files})
    assert errors == [f"n.yaml:10:5: {message}"]


@pytest.mark.parametrize("command", ["[]", '[""]', '["", "serve"]'])
def test_a_command_that_names_no_program_is_refused(tmp_path: Path, command: str) -> None:
    errors = _errors(tmp_path, {"n.yaml": HEAD + IMAGE + f"    command: {command}\n"})
    assert errors == [
        "n.yaml:9:14: spec.image.command: expected the program to run first (such as "
        "[python, serve.py]); leave command out to run the image's own"
    ]
