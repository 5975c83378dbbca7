"""The desired state: validated documents resolved into what plan needs, as frozen values."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from balancer.table import (
    DEFAULT_TIMEOUTS,
    AccessRule,
    HealthSettings,
    Timeouts,
    access_to_json,
    health_to_json,
)
from gitops_nodes.spec.hashing import InstanceConfig, canonical_json
from gitops_nodes.spec.models import HealthCheck, Rollout
from gitops_nodes.spec.secrets import NO_SECRETS, NodeSecrets


@dataclass(frozen=True)
class Source:
    """Where a document was written: its file (relative to the repo) and index in that file."""

    file: str
    document: int


@dataclass(frozen=True)
class Fetched:
    """A file or folder that goes into a python node's image from outside its code files:
    a fetched source (in the cache) or a repository file named under `files`."""

    destination: str  # inside the image's /app: sources/checkpoint, files/x, models/model
    path: str  # absolute, on the host
    digest: str  # sha256 of the content (a folder's: of its files' paths and digests)
    tree: bool = False


@dataclass(frozen=True)
class PythonBuild:
    """What a python node's image is made of (paths relative to the repository root)."""

    code: str
    checkpoint: str | None
    setup: str | None
    packages: tuple[str, ...]
    base_image: str
    config: str  # the node.json the image carries, as canonical JSON
    code_text: str | None = None  # a notebook cell's code, written to code/<code>
    fetched: tuple[Fetched, ...] = ()


@dataclass(frozen=True)
class SourceView:
    """What one of a node's sources resolved to, as plan shows it."""

    field: str
    source: str
    resolved: str
    fetched: bool = False  # downloaded by this load (False: found in the cache)


@dataclass(frozen=True)
class BuildRequest:
    """An image to build: from a folder of the repository, or a python node's image."""

    tag: str
    context: str
    dockerfile: str
    python: PythonBuild | None = None


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
    access: AccessRule | None = None  # private when set (key digests, never keys)
    timeouts: Timeouts = DEFAULT_TIMEOUTS  # the spec's `endpoint`
    maintenance_limit: int = 1  # instances replaced at once; plan reads it, nothing publishes it
    suspended: bool = False
    telemetry_path: str | None = None  # where instances serve Prometheus text; None: nowhere
    prefix_rewrite: bool = False  # the balancer puts answers' paths under /nodes/<name>
    # The secret values for the runtime to hand to each instance (their keyed digests are in
    # config, and so in spec_hash); never compared, printed or serialized.
    secrets: NodeSecrets = field(default=NO_SECRETS, compare=False, repr=False)
    # What its model sources resolved to, and the version warnings of its checkpoint and
    # models, for plan to show (their content is in spec_hash through the image tag).
    sources: tuple[SourceView, ...] = field(default=(), compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    health: HealthSettings = field(init=False, compare=False)
    digest: str = field(init=False, compare=False)  # of everything plan reads from this node

    def __post_init__(self) -> None:
        # Computed once per parse (the loader caches nodes), not on every plan.
        health = settings_from(self.health_check)
        payload = [
            self.spec_hash,
            self.instances,
            self.min_healthy,
            health_to_json(health),
            [self.timeouts.request, self.timeouts.idle],
            self.maintenance_limit,
            self.suspended,
        ]
        if self.access is not None:
            payload.append(access_to_json(self.access))
        if self.telemetry_path is not None:
            payload.append(["telemetry", self.telemetry_path])
        if self.prefix_rewrite:
            payload.append("prefixRewrite")
        object.__setattr__(self, "health", health)
        object.__setattr__(
            self, "digest", hashlib.sha256(canonical_json(payload).encode()).hexdigest()
        )


def settings_from(check: HealthCheck) -> HealthSettings:
    """The spec's health check in the routing table's terms."""
    return HealthSettings(
        path=check.path,
        port=check.port,
        interval=check.interval,
        timeout=check.timeout,
        healthy_threshold=check.healthy_threshold,
        unhealthy_threshold=check.unhealthy_threshold,
        start_timeout=check.start_timeout,
    )


@dataclass(frozen=True)
class DesiredAlias:
    """An alias as the spec wants it: (node, weight) pairs in the order written."""

    name: str
    routes: tuple[tuple[str, int], ...]
    source: Source
    affinity_header: str | None = None  # lowercase
    rollout: Rollout | None = None  # how watch moves it to new weights; plan ignores it
    access: AccessRule | None = None  # private when set (key digests, never keys)
    prefix_rewrite: bool = False  # the balancer puts answers' paths under /aliases/<name>


@dataclass(frozen=True, order=True)
class IgnoredFile:
    """A YAML file (or a folder, ending in /) of the repository that the load left out."""

    path: str
    reason: str


@dataclass(frozen=True)
class DesiredState:
    """Every node and alias of the repository, keyed by name."""

    root: Path
    nodes: Mapping[str, DesiredNode]
    aliases: Mapping[str, DesiredAlias]
    files: tuple[str, ...] = field(default=())
    # YAML files (and folders, ending in /) the load left out, with why, so a plan can show
    # a file that stopped being spec next to the destroys that causes.
    ignored: tuple[IgnoredFile, ...] = field(default=())

    def digest(self) -> str:
        """A digest of everything plan reads from the spec, to notice that it changed."""
        digest = hashlib.sha256()
        for name, node in sorted(self.nodes.items()):
            digest.update(f"node {name} {node.digest}\n".encode())
        for name, alias in sorted(self.aliases.items()):
            digest.update(f"alias {name} {alias.routes!r} {alias.affinity_header}\n".encode())
            if alias.prefix_rewrite:
                digest.update(b"prefixRewrite\n")
            if alias.access is not None:
                digest.update(f"access {canonical_json(access_to_json(alias.access))}\n".encode())
        return digest.hexdigest()
