"""`gitops-nodes checkpoint`'s arguments are checked before the notebook runs: a notebook can
take its whole time limit per cell, and what it made is lost when the last cell cannot save."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gitops_nodes import notebook
from gitops_nodes.cli import main

NOTEBOOK = {"cells": [{"cell_type": "code", "source": "a = 1\n", "metadata": {}}], "nbformat": 4}


@pytest.fixture
def book(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(NOTEBOOK))

    def never(*_: object, **__: object) -> Path:
        raise AssertionError("the notebook ran")

    monkeypatch.setattr(notebook, "run_checkpoint", never)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["checkpoint", *args])
    return code, capsys.readouterr().err


def test_the_notebook_itself_as_the_output_is_refused(
    book: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: the notebook was overwritten with the pickle.
    code, err = run(capsys, str(book), "--vars", "a", "-o", str(book))
    assert (code, err) == (
        1,
        f"error: -o {book}: is the notebook itself; expected the path of the checkpoint\n",
    )
    assert json.loads(book.read_text()) == NOTEBOOK


@pytest.mark.parametrize(
    ("output", "words"),
    [(".", "is a folder"), ("missing/x.pkl", "does not exist")],
    ids=["a folder", "in a missing folder"],
)
def test_an_output_that_cannot_be_written_is_refused_before_running(
    book: Path, capsys: pytest.CaptureFixture[str], output: str, words: str
) -> None:
    # Before: found by the generated last cell, after the whole notebook had run.
    target = book.parent / output
    code, err = run(capsys, str(book), "--vars", "a", "-o", str(target))
    assert code == 1 and err.startswith(f"error: -o {target}: ") and words in err


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--timeout", "500ms"], "--timeout: expected 1s to 24h"),  # was: no limit at all
        (["--timeout", "0s"], "--timeout: expected 1s to 24h"),
        (["--timeout", "25h"], "--timeout: expected 1s to 24h"),
        (
            ["--vars", "a,a"],
            "--vars: expected Python variable names separated by commas, each once",
        ),
    ],
    ids=["half a second", "zero", "over a day", "a variable twice"],
)
def test_usage_errors_are_refused_before_running(
    book: Path, capsys: pytest.CaptureFixture[str], flags: list[str], words: str
) -> None:
    code, err = run(capsys, str(book), "--vars", "a", "-o", str(book.with_suffix(".pkl")), *flags)
    assert code == 2 and words in err


def test_a_fifo_as_the_notebook_is_refused_not_waited_on(
    tmp_path: Path, book: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "pipe.ipynb"
    os.mkfifo(fifo)
    code, err = run(capsys, str(fifo), "--vars", "a", "-o", str(tmp_path / "x.pkl"))
    assert (code, err) == (1, f"error: {fifo}: expected a notebook file (.ipynb)\n")
