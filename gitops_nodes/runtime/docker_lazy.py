"""The docker runtime as commands use it: reads over the engine's socket, the SDK on demand.

A command that finds nothing to do (a no-op `plan`, `apply` or a `watch` reconcile, `status`)
only reads: the engine's ping, the project's containers and images. Those go through
EngineSocket (runtime/engine_socket.py); the Docker SDK runtime (runtime/docker.py) is made,
and the SDK imported, on the first call that needs more. Both read the same engine, and the
listing is parsed by the same code (runtime/container_records.py), so what a plan sees does
not depend on which one read it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from gitops_nodes.live import LiveInstance, Ownership
from gitops_nodes.runtime import labels
from gitops_nodes.runtime.base import ImageCleanup, LogStream
from gitops_nodes.runtime.container_records import instances_listed, tags_listed
from gitops_nodes.runtime.docker_host import DockerHost
from gitops_nodes.runtime.engine_socket import EngineSocket
from gitops_nodes.spec.context import BUILD_REPOSITORY
from gitops_nodes.spec.state import BuildRequest, DesiredNode
from gitops_nodes.statedir import StateDir

if TYPE_CHECKING:
    from pathlib import Path

    from gitops_nodes.runtime.docker import DockerRuntime


class LazyDockerRuntime(DockerHost):
    """The docker Runtime whose reads need no SDK; the rest goes to a DockerRuntime made on
    first use (which pings the engine through the SDK then, once)."""

    name = "docker"

    def __init__(self, engine: EngineSocket) -> None:
        engine.ping()
        self.engine = engine
        self._sdk: DockerRuntime | None = None
        self._making = threading.Lock()  # apply's steps run in threads: one SDK runtime
        self._host_name: str | None = None

    def sdk(self) -> DockerRuntime:
        """The SDK runtime, made (and the SDK imported) on the first call that needs it."""
        with self._making:
            if self._sdk is None:
                from gitops_nodes.runtime.docker import DockerRuntime

                self._sdk = DockerRuntime()
            return self._sdk

    # -- reads: over the socket ------------------------------------------------------------

    def list_instances(self, project: str) -> list[LiveInstance]:
        return instances_listed(self.engine.containers(labels.project_filter(project)))

    def list_images(self, project: str) -> set[str]:
        return tags_listed(self.engine.images(BUILD_REPOSITORY))

    def host_name(self) -> str:
        if self._host_name is None:
            self._host_name = str(self.engine.info().get("Name") or "")
        return self._host_name

    # -- changes and the rest: the SDK runtime -----------------------------------------------

    def build_image(self, project: str, root: Path, request: BuildRequest) -> None:
        self.sdk().build_image(project, root, request)

    def create_instance(
        self, project: str, node: DesiredNode, index: int, ownership: Ownership
    ) -> LiveInstance:
        return self.sdk().create_instance(project, node, index, ownership)

    def start_instance(self, project: str, name: str) -> LiveInstance:
        return self.sdk().start_instance(project, name)

    def inspect_instance(self, project: str, name: str) -> LiveInstance | None:
        return self.sdk().inspect_instance(project, name)

    def stop_instance(self, project: str, name: str, grace: float) -> str:
        return self.sdk().stop_instance(project, name, grace)

    def remove_instance(self, project: str, name: str) -> None:
        self.sdk().remove_instance(project, name)

    def instance_logs(self, name: str, lines: int) -> str:
        return self.sdk().instance_logs(name, lines)

    def log_stream(self, name: str, tail: int | None, follow: bool) -> LogStream:
        return self.sdk().log_stream(name, tail, follow)

    def remove_images(self, project: str) -> ImageCleanup:
        return self.sdk().remove_images(project)

    def remove_project(self, project: str, state: StateDir) -> list[str]:
        return self.sdk().remove_project(project, state)
