"""A file whose lines end with CR alone (classic Mac OS): YAML counts each CR as a line break,
so an error in its second document is at line 21, not past the end of the file."""

from pathlib import Path

NODE = """apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: {name}
spec:
  image:
    name: nginx:1.25
    port: 80
  instances: {instances}
"""


def make(repo: Path) -> None:
    text = "# a comment\n" * 2 + NODE.format(name="web", instances=2) + "---\n"
    text += NODE.format(name="web2", instances=0)
    (repo / "web.yaml").write_bytes(text.replace("\n", "\r").encode())
