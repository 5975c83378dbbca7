"""`gitops-nodes serve` refuses a worker count it cannot run, before it listens."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gitops_nodes.cli import main


def test_serve_needs_at_least_one_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", str(tmp_path), "--project", "p", "--state-dir", str(tmp_path)]
    code = main([*argv, "--runtime", "docker", "--workers", "0", "--log-format", "text"])
    assert code == 1
    assert "--workers: expected 1 or more, got 0" in capsys.readouterr().err


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
