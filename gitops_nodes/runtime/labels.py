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
# The owner id of the state directory that created the container (statedir.ownership): a
# container of the project is ours only when it carries an owner id we claim.
OWNER = f"{PREFIX}.owner"
# The host path of a python node instance's Unix socket (see runtime/docker.py).
SOCKET = f"{PREFIX}.socket"
BUILD_CONTEXT = f"{PREFIX}.build-context"
# On an image we built: the project it was built for. Not PROJECT: a container run from the
# image inherits its labels, and must not look like one of the project's.
BUILT_FOR = f"{PREFIX}.built-for"
# On a Swarm: what a service, network or secret of the project is for ("node", "balancer",
# "network", "token"); a node's service and its tasks also carry NODE, SPEC_HASH and CONFIG.
ROLE = f"{PREFIX}.role"


def project_filter(project: str) -> dict[str, list[str]]:
    """The Docker filter that selects everything one project owns, and nothing else."""
    return {"label": [f"{PROJECT}={project}"]}


def image_filters(project: str) -> list[dict[str, list[str]]]:
    """The Docker filters that select the images built for a project: by BUILT_FOR, and
    images built before that label existed, which carry PROJECT."""
    return [{"label": [f"{BUILT_FOR}={project}"]}, project_filter(project)]


def config_of(value: str | None) -> InstanceConfig | None:
    """The instance config a CONFIG label holds; None when it is missing or unreadable (a
    container or task labelled by another version: plan then replaces it)."""
    if not value:
        return None
    try:
        return InstanceConfig.from_dict(json.loads(value))
    except (ValueError, KeyError, TypeError):
        return None
