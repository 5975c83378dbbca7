"""Unit fixtures: desired states loaded from YAML documents written to a temporary repo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitops_nodes.spec.load import load_spec
from gitops_nodes.spec.state import DesiredState


@pytest.fixture
def desired(
    write_repo: Callable[[dict[str, str]], Path],
) -> Callable[..., DesiredState]:
    """Write the documents (and any extra files) into a fresh repo and load it."""

    def make(*documents: dict[str, Any], files: dict[str, str] | None = None) -> DesiredState:
        text = yaml.safe_dump_all(documents, sort_keys=False)
        return load_spec(write_repo({"spec.yaml": text, **(files or {})}))

    return make
