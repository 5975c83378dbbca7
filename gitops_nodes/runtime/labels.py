"""Every label key gitops-nodes puts on what it owns, once. Live state is read from these alone."""

from __future__ import annotations

import json

from gitops_nodes.spec.hashing import InstanceConfig

PREFIX = "io.gitops-nodes"
PROJECT = f"{PREFIX}.project"
NODE = f"{PREFIX}.node"
INDEX = f"{PREFIX}.instance"
SPEC_HASH = f"{PREFIX}.spec-hash"
CONFIG = f"{PREFIX}.config"
# The host path of a python node instance's Unix socket (see runtime/docker.py).
SOCKET = f"{PREFIX}.socket"
BUILD_CONTEXT = f"{PREFIX}.build-context"
# On a Swarm: what a service, network or secret of the project is for ("node", "balancer",
# "network", "token"); a node's service and its tasks also carry NODE, SPEC_HASH and CONFIG.
ROLE = f"{PREFIX}.role"


def project_filter(project: str) -> dict[str, list[str]]:
    """The Docker filter that selects everything one project owns, and nothing else."""
    return {"label": [f"{PROJECT}={project}"]}


def config_of(value: str | None) -> InstanceConfig | None:
    """The instance config a CONFIG label holds; None when it is missing or unreadable (a
    container or task labelled by another version: plan then replaces it)."""
    if not value:
        return None
    try:
        return InstanceConfig.from_dict(json.loads(value))
    except (ValueError, KeyError, TypeError):
        return None
