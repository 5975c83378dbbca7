"""What the docker runtime answers without asking the engine: one host's balancers follow the
state directory's table, an instance is probed on its loopback port, and containers need
nothing prepared. Shared by the SDK runtime (runtime/docker.py) and the one that loads the
SDK on demand (runtime/docker_lazy.py), so the two cannot answer these differently."""

from __future__ import annotations

from balancer.table import HealthSettings, RoutingTable
from gitops_nodes.fleet import BalancerFleet, LocalBalancers
from gitops_nodes.health import Probe, probe
from gitops_nodes.live import LiveInstance, Ownership
from gitops_nodes.spec.state import DesiredNode
from gitops_nodes.statedir import StateDir


class DockerHost:
    """The engine-free part of a Runtime on one Docker host."""

    def prepare_project(self, project: str, state: StateDir) -> None:
        return None  # containers need nothing project-wide: Docker's default bridge network

    def prepare_node(
        self, project: str, name: str, node: DesiredNode | None, ownership: Ownership
    ) -> None:
        return None  # a node is its containers, each created and removed by its own step

    def probe_instance(self, instance: LiveInstance, health: HealthSettings) -> Probe:
        return probe(instance.port or 0, health)

    def discovery(self, project: str, node: str, port: int) -> str | None:
        return None  # apply lists each container's loopback port in the table

    def balancers(self, project: str, state: StateDir) -> BalancerFleet:
        return LocalBalancers(state)

    def served_table(self, project: str, state: StateDir) -> RoutingTable | None:
        return None  # this host's balancers follow the state directory's file
