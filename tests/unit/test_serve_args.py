"""`gitops-nodes serve` refuses a worker count it cannot run, before it listens."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gitops_nodes.cli import main


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
