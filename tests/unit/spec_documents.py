"""Spec documents as dicts, written to a repository folder and loaded as `validate` loads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gitops_nodes.spec.load import load_spec
from gitops_nodes.spec.state import DesiredState


def node(name: str, version: str = "1", instances: int = 1, **spec: Any) -> dict[str, Any]:
    """A busybox node with VERSION=version (a new version means new instances)."""
    return {
        "apiVersion": "gitops-nodes/v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {
            "image": {"name": "busybox:1", "port": 8080},
            "instances": instances,
            "env": {"VERSION": version},
            **spec,
        },
    }


def alias(name: str, *routes: tuple[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "gitops-nodes/v1",
        "kind": "Alias",
        "metadata": {"name": name},
        "spec": {"nodes": [{"node": n, "weight": w} for n, w in routes]},
    }


def load(
    root: Path, *documents: dict[str, Any], files: dict[str, str] | None = None
) -> DesiredState:
    """Write documents (and files, by path) into a new folder root and load it."""
    root.mkdir(parents=True)
    (root / "spec.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return load_spec(root)
