"""Desired states built as values (no YAML files) and a memory runtime to apply them on."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from gitops_nodes import workflow
from gitops_nodes.apply import ApplyOptions, StepResult
from gitops_nodes.live import LiveState
from gitops_nodes.runtime.memory import Faults, MemoryBalancers, MemoryRuntime, VirtualClock
from gitops_nodes.spec.hashing import InstanceConfig, spec_hash
from gitops_nodes.spec.models import HealthCheck
from gitops_nodes.spec.state import DesiredAlias, DesiredNode, DesiredState, Source
from gitops_nodes.statedir import StateDir

PROJECT = "mem"


@functools.lru_cache(maxsize=1024)  # property tests make the same few thousands of times
def node(
    name: str,
    *,
    instances: int = 1,
    min_healthy: int = 1,
    version: str = "1",
    start_timeout: float = 30.0,
    maintenance_limit: int = 1,
) -> DesiredNode:
    """A node running busybox with VERSION=version (a new version means new instances)."""
    config = InstanceConfig("busybox", 8080, None, (("VERSION", version),), None, None)
    return DesiredNode(
        name=name,
        config=config,
        spec_hash=spec_hash(config),
        instances=instances,
        min_healthy=min_healthy,
        health_check=HealthCheck.model_validate(
            {"path": "/healthz", "interval": "1s", "start_timeout": f"{start_timeout:g}s"}
        ),
        build=None,
        source=Source("spec.yaml", 0),
        maintenance_limit=maintenance_limit,
    )


def alias(name: str, *routes: tuple[str, int]) -> DesiredAlias:
    return DesiredAlias(name, tuple(routes), Source("spec.yaml", 0))


def spec(root: Path, *items: DesiredNode | DesiredAlias) -> DesiredState:
    nodes = {i.name: i for i in items if isinstance(i, DesiredNode)}
    aliases = {i.name: i for i in items if isinstance(i, DesiredAlias)}
    return DesiredState(root, MappingProxyType(nodes), MappingProxyType(aliases))


@dataclass
class World:
    """One project on a memory engine, its state directory and its balancers."""

    root: Path
    clock: VirtualClock = field(default_factory=VirtualClock)
    faults: Faults = field(default_factory=Faults)
    runtime: MemoryRuntime = field(init=False)
    results: list[StepResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runtime = MemoryRuntime(self.clock, self.faults)
        self.state = StateDir(self.root / "state")

    @property
    def fleet(self) -> MemoryBalancers:
        return self.runtime.fleet(PROJECT)

    def options(self) -> ApplyOptions:
        return ApplyOptions(parallelism=1, drain_timeout=5.0, stop_grace=1.0, clock=self.clock)

    def apply(
        self, desired: DesiredState, on_result: Callable[[StepResult], None] | None = None
    ) -> workflow.ApplyRun:
        self.results = []

        def record(result: StepResult) -> None:
            self.results.append(result)
            if on_result is not None:
                on_result(result)

        return workflow.apply(
            desired,
            self.runtime,
            PROJECT,
            self.state,
            self.options(),
            on_result=record,
            on_start=self.runtime.step_started,
        )

    def live(self) -> LiveState:
        return workflow.observe(self.runtime, PROJECT, self.state)
