"""Every label key gitops-nodes puts on what it owns, once. Live state is read from these alone."""

from __future__ import annotations

PREFIX = "io.gitops-nodes"
PROJECT = f"{PREFIX}.project"
NODE = f"{PREFIX}.node"
INDEX = f"{PREFIX}.instance"
SPEC_HASH = f"{PREFIX}.spec-hash"
CONFIG = f"{PREFIX}.config"
BUILD_CONTEXT = f"{PREFIX}.build-context"
# On a Swarm: what a service, network or secret of the project is for ("node", "balancer",
# "network", "token"); a node's service and its tasks also carry NODE, SPEC_HASH and CONFIG.
ROLE = f"{PREFIX}.role"


def project_filter(project: str) -> dict[str, list[str]]:
    """The Docker filter that selects everything one project owns, and nothing else."""
    return {"label": [f"{PROJECT}={project}"]}
