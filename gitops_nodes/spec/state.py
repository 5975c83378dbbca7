"""The desired state: validated documents resolved into what plan needs, as frozen values."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gitops_nodes.spec.hashing import InstanceConfig, canonical_json
from gitops_nodes.spec.models import HealthCheck


@dataclass(frozen=True)
class Source:
    """Where a document was written: its file (relative to the repo) and index in that file."""

    file: str
    document: int


@dataclass(frozen=True)
class BuildRequest:
    """An image to build from a folder of the repository."""

    tag: str
    context: str
    dockerfile: str


@dataclass(frozen=True)
class DesiredNode:
    """A node as the spec wants it."""

    name: str
    config: InstanceConfig
    spec_hash: str
    instances: int
    min_healthy: int
    health_check: HealthCheck
    build: BuildRequest | None
    source: Source


@dataclass(frozen=True)
class DesiredAlias:
    """An alias as the spec wants it: (node, weight) pairs in the order written."""

    name: str
    routes: tuple[tuple[str, int], ...]
    source: Source


@dataclass(frozen=True)
class DesiredState:
    """Every node and alias of the repository, keyed by name."""

    root: Path
    nodes: Mapping[str, DesiredNode]
    aliases: Mapping[str, DesiredAlias]
    files: tuple[str, ...] = field(default=())

    def digest(self) -> str:
        """A digest of everything plan reads from the spec, to notice that it changed."""
        payload = {
            "nodes": {
                name: [n.spec_hash, n.instances, n.min_healthy, n.health_check.model_dump()]
                for name, n in sorted(self.nodes.items())
            },
            "aliases": {name: a.routes for name, a in sorted(self.aliases.items())},
        }
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
