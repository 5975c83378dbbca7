"""A python node whose code nests 200,000 unary minuses: the compiler runs out of stack."""

from __future__ import annotations

from pathlib import Path

NODE = """apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: deep}
spec:
  python:
    code: predict.py
    inputs: {x: int}
    outputs: {y: int}
"""


def make(repo: Path) -> None:
    (repo / "node.yaml").write_text(NODE)
    (repo / "predict.py").write_text("y = " + "-" * 200_000 + "x\n")
