"""Command-line options out of their range are refused before anything is read or listened on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gitops_nodes.cli import _parser, main


@pytest.mark.parametrize("workers", ["0", "-2", "100000"])  # the last, a typo: 100,000 forks
def test_serve_needs_one_to_64_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    argv = ["serve", str(tmp_path), "--project", "p", "--state-dir", str(tmp_path)]
    code = main([*argv, "--runtime", "docker", "--workers", workers, "--log-format", "text"])
    assert code == 1
    assert f"--workers: expected 1 to 64, got {workers}" in capsys.readouterr().err


def test_a_refused_worker_count_leaves_logging_alone(tmp_path: Path) -> None:
    before = list(logging.getLogger().handlers)
    main(
        [
            "serve",
            str(tmp_path),
            "--state-dir",
            str(tmp_path),
            "--runtime",
            "docker",
            "--workers",
            "-1",
        ]
    )
    assert logging.getLogger().handlers == before


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["plan", "--project", "../../etc"], "argument --project: expected 1 to 63 lowercase"),
        (["status", "--project", "Upper"], "got 'Upper' (from --project, or else GITOPS_NODES_"),
        (["destroy", "--project", "a/b"], "argument --project: expected"),
        (["apply", "--parallelism", "0"], "argument --parallelism: expected 1 to 64, got '0'"),
        (["apply", "--parallelism", "1e9"], "argument --parallelism: expected 1 to 64"),
        (["apply", "--drain-timeout", "nan"], "argument --drain-timeout: expected seconds"),
        (["apply", "--drain-timeout", "-1"], "argument --drain-timeout: expected seconds"),
    ],
)
def test_an_option_out_of_its_range_is_a_usage_error_before_anything_is_read(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A project names a folder of the state directory: `../../etc` put the state elsewhere.
    with pytest.raises(SystemExit) as exited:
        main([*argv, "/nonexistent"])
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


def test_a_project_from_the_environment_is_checked_as_well(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GITOPS_NODES_PROJECT", "../up")
    with pytest.raises(SystemExit):
        main(["plan", "/nonexistent"])
    assert "got '../up' (from --project, or else GITOPS_NODES_PROJECT)" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["a", "web-2", "my_project", "0day", "x" * 63])
def test_project_names_compose_would_take_are_taken(name: str) -> None:
    assert _parser().parse_args(["plan", "--project", name]).project == name


def test_destroy_of_a_folder_that_is_not_there_is_refused_without_a_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It would take its project's name from the typo: another repository's project, say.
    missing = tmp_path / "exmaple-repo"
    assert main(["destroy", str(missing), "--state-dir", str(tmp_path)]) == 1
    assert "is not a folder: destroy takes the project's name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no state directory made for it either
