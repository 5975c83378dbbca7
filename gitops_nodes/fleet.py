"""The balancers a project's tables go to, and how apply hears back from them.

Apply publishes every routing table to the state directory (the live state's record of what
it published) and then to its balancers; it waits on their reports before it moves an alias
or stops an instance. Where the balancers are depends on the runtime:

- `LocalBalancers`: processes on this host (`gitops-nodes serve`, the balancer inside `watch`)
  that follow the table file themselves and report through files in the state directory;
- `SwarmBalancers` (runtime/swarm_balancer.py): a Swarm service that gets each table over its
  authenticated admin endpoint and reports over it.
"""

from __future__ import annotations

from typing import Protocol

from balancer.table import RoutingTable
from gitops_nodes.statedir import BalancerAck, StateDir, balancer_acks


class BalancerFleet(Protocol):
    """Where apply's tables go, and the reports of the balancers that serve them."""

    def publish(self, table: RoutingTable) -> None:
        """Hand table to every balancer; raises RuntimeFailure when none could take it."""
        ...

    def acks(self) -> list[BalancerAck]:
        """What each running balancer reports now: the generation it serves, the instances
        it counts Healthy and the removed ones it still has requests on."""
        ...

    def sync(self, table: RoutingTable | None) -> None:
        """Give the last published table to any balancer that serves an older one (a
        balancer that restarted); nothing to do for balancers that follow the file."""
        ...


class LocalBalancers:
    """Balancer processes on this host: they follow the table file apply writes."""

    def __init__(self, state: StateDir) -> None:
        self.state = state

    def publish(self, table: RoutingTable) -> None:
        return None  # the file apply just replaced is how they get it

    def acks(self) -> list[BalancerAck]:
        return balancer_acks(self.state)

    def sync(self, table: RoutingTable | None) -> None:
        return None
