"""gitops-nodes: nodes, instances and aliases on Docker, driven from a Git repository of YAML."""

from __future__ import annotations

__version__ = "0.1.0"
