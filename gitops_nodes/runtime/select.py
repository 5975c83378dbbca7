"""Which runtime a command uses: `--runtime`, else the repo's settings file, else docker."""

from __future__ import annotations

from gitops_nodes.runtime.base import Runtime
from gitops_nodes.spec.settings import Settings


def runtime_name(flag: str | None, settings: Settings) -> str:
    """The runtime's name: the command line's choice over the settings file's."""
    return flag or settings.runtime


def connect(name: str, settings: Settings) -> Runtime:
    """Connect to the engine the named runtime needs (the Docker SDK is imported only when
    something is to be changed, or for an engine that is not a local socket)."""
    if name == "swarm":
        from gitops_nodes.runtime.swarm import SwarmRuntime

        return SwarmRuntime(settings.swarm)
    from gitops_nodes.runtime.engine_socket import EngineSocket, socket_from_env

    path = socket_from_env()
    if path is not None:  # a local engine: read without the SDK until something changes
        from gitops_nodes.runtime.docker_lazy import LazyDockerRuntime

        return LazyDockerRuntime(EngineSocket(path))
    from gitops_nodes.runtime.docker import DockerRuntime

    return DockerRuntime()
