"""A checkpoint whose header names a package by a number: read as a warning, not a crash."""

import pickle
from pathlib import Path


def make(repo: Path) -> None:
    header = {"gitops-nodes-checkpoint": 1, "packages": {1: "x", "numpy": "1"}}
    (repo / "s.pkl").write_bytes(pickle.dumps(header) + pickle.dumps({"x": 1.0}))
