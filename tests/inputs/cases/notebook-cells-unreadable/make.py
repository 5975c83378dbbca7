"""Notebooks whose JSON parses but gives no cell code: a source list holding a number, JSON
nested 100,000 deep, a lone surrogate (\\ud800) in a cell. Each is a spec error at the node's
cell field naming the notebook, all listed at once."""

from pathlib import Path

NODE = """apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: {name}
spec:
  python:
    notebook: {name}.ipynb
    cell: predict
    inputs: {{x: float}}
    outputs: {{y: float}}
"""
CELL = '{{"cells": [{{"cell_type": "code", "id": "predict", "source": {source}}}]}}'


def make(repo: Path) -> None:
    notebooks = {
        "listed": CELL.format(source='["y = x\\n", 1]'),
        "deep": "[" * 100_000,
        "surrogate": CELL.format(source='"y = x  # \\ud800\\n"'),
    }
    for name, content in notebooks.items():
        (repo / f"{name}.ipynb").write_text(content)
    (repo / "nodes.yaml").write_text("---\n".join(NODE.format(name=name) for name in notebooks))
