"""`status` probes every running instance at once, within one short deadline: many instances
cost one probe's time, and a silent one costs the deadline once, not its timeout per instance."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from balancer.table import HealthSettings
from gitops_nodes import workflow
from gitops_nodes.health import Probe
from gitops_nodes.live import LOST, LiveInstance
from tests.unit.memory_world import PROJECT, World, node, spec

NODES = 24  # more than any fixed pool of a dozen or so threads


def _world(tmp_path: Path) -> World:
    world = World(tmp_path)
    run = world.apply(spec(tmp_path, *(node(f"n{i:02d}") for i in range(NODES))))
    assert run.report is not None and run.report.ok
    return world


def test_every_probe_is_in_flight_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = _world(tmp_path)
    original = world.runtime.probe_instance
    # Each probe waits until all of them are running: only probes made at once get through.
    together = threading.Barrier(NODES, timeout=20)

    def probe(instance: LiveInstance, health: HealthSettings) -> Probe:
        together.wait()
        return original(instance, health)

    monkeypatch.setattr(world.runtime, "probe_instance", probe)
    view = workflow.status(world.runtime, PROJECT, world.state, None)

    assert [n.status for n in view.nodes] == ["Healthy"] * NODES
    assert not together.broken


def test_a_silent_instance_costs_the_deadline_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workflow, "STATUS_DEADLINE", 1.0)  # the test waits it out once
    world = _world(tmp_path)
    original = world.runtime.probe_instance
    release = threading.Event()

    def probe(instance: LiveInstance, health: HealthSettings) -> Probe:
        assert health.timeout <= workflow.STATUS_DEADLINE
        if instance.node == "n03":
            release.wait(30)  # answers long after the deadline
        return original(instance, health)

    monkeypatch.setattr(world.runtime, "probe_instance", probe)
    try:
        view = workflow.status(world.runtime, PROJECT, world.state, None)
    finally:
        release.set()

    statuses = {n.name: n.status for n in view.nodes}
    assert statuses.pop("n03") == "Unhealthy"
    assert set(statuses.values()) == {"Healthy"}
    (silent,) = next(n for n in view.nodes if n.name == "n03").instances
    assert f"no answer to its check within {workflow.STATUS_DEADLINE:g}s" in silent.detail


def test_status_names_each_instances_host_and_why_a_lost_one_is_unhealthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(tmp_path)
    run = world.apply(spec(tmp_path, node("api", instances=2)))
    assert run.report is not None and run.report.ok
    listed = world.runtime.list_instances
    # As the Swarm runtime lists them with its host down: one running here, one lost there.
    hosts = iter(("lab-manager", "lab-worker-2"))

    def on_hosts(project: str) -> list[LiveInstance]:
        found = [replace(i, hostname=next(hosts)) for i in listed(project)]
        return [found[0], replace(found[1], state=LOST)]

    monkeypatch.setattr(world.runtime, "list_instances", on_hosts)
    view = workflow.status(world.runtime, PROJECT, world.state, None).to_json()

    instances = view["nodes"][0]["instances"]
    assert [(i["hostname"], i["status"]) for i in instances] == [
        ("lab-manager", "Healthy"),
        ("lab-worker-2", "Unhealthy"),
    ]
    assert instances[1]["detail"].startswith("lab-worker-2 is down: Swarm starts a replacement")
