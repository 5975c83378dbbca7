"""Two hundred nodes in one file, written here rather than committed."""

from __future__ import annotations

from pathlib import Path

NODE = """apiVersion: gitops-nodes/v1
kind: Node
metadata: {{name: node-{i}}}
spec:
  image: {{name: "web:1", port: 8080}}
"""


def make(repo: Path) -> None:
    (repo / "nodes.yaml").write_text("---\n".join(NODE.format(i=i) for i in range(200)))
