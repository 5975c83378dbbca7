"""An access key fromFile that is a FIFO outside the repository: refused, not waited on."""

import os
from pathlib import Path

WEB = """apiVersion: gitops-nodes/v1
kind: Node
metadata: {{name: web}}
spec:
  image: {{name: busybox, port: 8080}}
  access:
    keys: [{{name: ci, fromFile: {key}}}]
"""


def make(repo: Path) -> None:
    key = repo.parent / "tmp" / "key"  # the runner's {tmp}, outside the repository
    key.parent.mkdir(exist_ok=True)
    os.mkfifo(key)
    (repo / "web.yaml").write_text(WEB.format(key=key))
