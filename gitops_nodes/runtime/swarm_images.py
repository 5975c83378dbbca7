"""Getting the images gitops-nodes builds on the manager to every node of a Swarm.

With `swarm.registry` set, each image we build is tagged `<registry>/<name>` and pushed there,
and services name it so: every node pulls it. Without one, no registry is needed: the image
is saved on the manager and loaded into each other node's engine that lacks it (reached
through `swarm.engines`, else `ssh://<node address>`, the SSH way Docker clients reach remote
engines). On a one-node swarm there is no other node and the local image is all it takes.

Images that we did not build (an `image.name` such as nginx:1.27) are the nodes' business to
pull, except that one the manager has locally is loaded like ours where there is no registry.

A node that joins later: with a registry it pulls like the others. Without one, every apply
(and every reconcile of `watch`) lists the nodes again and loads what a new one lacks; until
then Swarm cannot start our tasks there (the task is rejected: no such image) and starts them
elsewhere, except the balancer's, which Swarm retries on that node until the image is there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound

from gitops_nodes.errors import RuntimeFailure
from gitops_nodes.runtime.docker import ENGINE_ERRORS, engine_error
from gitops_nodes.spec.settings import SwarmSettings

OURS = ("gitops-nodes/",)  # repositories of the images gitops-nodes builds


@dataclass(frozen=True)
class SwarmNode:
    """A node of the swarm that tasks may run on."""

    id: str
    hostname: str
    address: str


def registry_reference(image: str, registry: str | None) -> str:
    """The name services use for image: in the registry for images we build, else as is."""
    if registry is None or not image.startswith(OURS):
        return image
    return f"{registry}/{image}"


def engine_url(node: SwarmNode, engines: Mapping[str, str]) -> str:
    """How to reach a node's Docker engine: as configured for its hostname, else over SSH."""
    return engines.get(node.hostname) or f"ssh://{node.address}"


def other_nodes(nodes: Iterable[Mapping[str, Any]], local_id: str) -> list[SwarmNode]:
    """The ready, active nodes other than the manager we talk to (the Engine API's nodes)."""
    found = []
    for node in nodes:
        status = node.get("Status") or {}
        spec = node.get("Spec") or {}
        if node.get("ID") == local_id or status.get("State") != "ready":
            continue
        if spec.get("Availability", "active") != "active":
            continue
        hostname = (node.get("Description") or {}).get("Hostname") or node.get("ID", "")
        found.append(SwarmNode(str(node.get("ID")), str(hostname), str(status.get("Addr", ""))))
    return found


class ImageShipper:
    """Makes an image on the manager usable by every node (push, or save and load)."""

    def __init__(self, api: Any, settings: SwarmSettings, local_id: str) -> None:
        self.api = api
        self.settings = settings
        self.local_id = local_id
        self.lock = threading.Lock()
        self.pushed: set[str] = set()  # images this process pushed to the registry
        self.loaded: dict[str, set[str]] = {}  # image -> the nodes this process loaded it on

    def reference(self, image: str) -> str:
        return registry_reference(image, self.settings.registry)

    def ship(self, image: str) -> None:
        """Push image to the registry, or load it into every other node lacking it (the
        nodes are listed anew each time: one may have joined since)."""
        with self.lock:
            if self.settings.registry is not None:
                if image.startswith(OURS) and image not in self.pushed:
                    self._push(image)
                    self.pushed.add(image)
            else:
                self._load_elsewhere(image)

    def _push(self, image: str) -> None:
        target = self.reference(image)
        repository, _, tag = target.rpartition(":")
        try:
            self.api.tag(image, repository, tag)
            for chunk in self.api.push(repository, tag, stream=True, decode=True):
                if "error" in chunk:
                    raise RuntimeFailure(f"pushing {target} failed: {chunk['error']}")
        except ENGINE_ERRORS as exc:
            raise engine_error(f"pushing {target} failed", exc) from exc

    def _load_elsewhere(self, image: str) -> None:
        try:
            self.api.inspect_image(image)
        except ImageNotFound:
            return  # not built here: the nodes pull it like any named image
        except ENGINE_ERRORS as exc:
            raise engine_error(f"inspecting image {image} failed", exc) from exc
        try:
            nodes = other_nodes(self.api.nodes(), self.local_id)
        except ENGINE_ERRORS as exc:
            raise engine_error("listing the swarm's nodes failed", exc) from exc
        done = self.loaded.setdefault(image, set())
        for node in nodes:
            if node.id not in done:
                self._load_into(node, image)
                done.add(node.id)

    def _load_into(self, node: SwarmNode, image: str) -> None:
        url = engine_url(node, self.settings.engines)
        what = f"loading {image} into node {node.hostname} ({url})"
        try:
            remote = docker.DockerClient(
                base_url=url, use_ssh_client=url.startswith("ssh://"), timeout=600
            )
        except ENGINE_ERRORS as exc:
            raise RuntimeFailure(
                f"{what} failed: its engine does not answer ({exc}); set swarm.engines."
                f"{node.hostname} in gitops-nodes.yaml, or a swarm.registry"
            ) from exc
        try:
            try:
                remote.api.inspect_image(image)
                return
            except ImageNotFound:
                pass
            remote.api.load_image(self.api.get_image(image))
        except (APIError, *ENGINE_ERRORS) as exc:
            raise engine_error(f"{what} failed", exc) from exc
        finally:
            remote.close()
