"""One load of a repository reports the problems of its spec and of gitops-nodes.yaml together."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.settings import SETTINGS_FILE, load_repository

WriteRepo = Callable[[dict[str, str]], Path]

NODE = """
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: api}
spec:
  image: {name: busybox, port: 8080}
  instances: %s
"""


def test_spec_and_settings_problems_come_in_one_list(write_repo: WriteRepo) -> None:
    root = write_repo({"spec.yaml": NODE % 0, SETTINGS_FILE: "runtime: kubernetes\n"})
    with pytest.raises(SpecErrors) as caught:
        load_repository(root)
    assert [str(problem) for problem in caught.value.problems] == [
        "gitops-nodes.yaml:1:10: runtime: expected 'docker' or 'swarm', got 'kubernetes'",
        "spec.yaml:6:14: spec.instances: expected a value ≥ 1, got 0",
    ]


def test_settings_problems_alone_are_reported(write_repo: WriteRepo) -> None:
    root = write_repo({"spec.yaml": NODE % 2, SETTINGS_FILE: "swarm: {port: 0}\n"})
    with pytest.raises(SpecErrors, match=r"gitops-nodes.yaml:1:15: swarm.port"):
        load_repository(root)


def test_a_valid_repository_gives_its_spec_and_settings(write_repo: WriteRepo) -> None:
    root = write_repo({"spec.yaml": NODE % 2, SETTINGS_FILE: "runtime: swarm\n"})
    desired, settings = load_repository(root)
    assert desired.nodes["api"].instances == 2
    assert settings.runtime == "swarm"
