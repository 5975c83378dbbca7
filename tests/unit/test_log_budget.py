"""A node's log budget: the spec's `logs`, and the rotation each runtime creates containers with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gitops_nodes.runtime.docker import log_config
from gitops_nodes.runtime.swarm_spec import node_service_spec, projection
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.hashing import InstanceConfig, spec_hash
from gitops_nodes.spec.load import load_spec
from gitops_nodes.spec.models import HealthCheck
from gitops_nodes.spec.state import DesiredNode, Source

CONFIG = InstanceConfig("busybox", 8080, None, (), None, None)


def _node(config: InstanceConfig) -> DesiredNode:
    return DesiredNode(
        name="api",
        config=config,
        spec_hash=spec_hash(config),
        instances=1,
        min_healthy=1,
        health_check=HealthCheck(),
        build=None,
        source=Source("spec.yaml", 0),
    )


def test_containers_rotate_at_the_default_budget_when_the_node_sets_none() -> None:
    assert log_config(CONFIG) == {
        "Type": "json-file",
        "Config": {"max-size": str(10 * 2**20), "max-file": "3"},
    }


def test_containers_rotate_at_the_nodes_budget() -> None:
    config = replace(CONFIG, logs=(2 * 2**20, 5))
    assert log_config(config)["Config"] == {"max-size": str(2 * 2**20), "max-file": "5"}


def test_a_swarm_service_carries_the_budget_but_compares_it_through_the_config_label() -> None:
    plain = node_service_spec("p", _node(CONFIG), "img", "p--net")
    assert plain["TaskTemplate"]["LogDriver"] == {
        "Name": "json-file",
        "Options": {"max-size": str(10 * 2**20), "max-file": "3"},
    }
    # A service created before budgets existed (no LogDriver) is not updated for the default.
    before = {
        **plain,
        "TaskTemplate": {k: v for k, v in plain["TaskTemplate"].items() if k != "LogDriver"},
    }
    assert projection(before, {}) == projection(plain, {})
    # An explicit budget is in the config label, so setting or changing it updates the service.
    budgeted = node_service_spec("p", _node(replace(CONFIG, logs=(2**20, 2))), "img", "p--net")
    assert budgeted["TaskTemplate"]["LogDriver"]["Options"] == {
        "max-size": "1048576",
        "max-file": "2",
    }
    assert projection(budgeted, {}) != projection(plain, {})


@pytest.mark.parametrize(
    ("logs", "expected"),
    [
        ("{maxFiles: 0}", "s.yaml:9:20: spec.logs.maxFiles: expected a value ≥ 1, got 0"),
        (
            "{maxSize: 1k}",
            "s.yaml:9:9: spec.logs: expected at least 64k for a log file, got 1000 bytes",
        ),
        (
            "{maxSize: 10MB}",
            "s.yaml:9:19: spec.logs.maxSize: "
            "expected a size in bytes such as 268435456, 256Mi, 1Gi or 300M, got '10MB'",
        ),
        (
            "{files: 2}",
            "s.yaml:9:10: spec.logs.files: unknown field; expected one of: maxSize, maxFiles",
        ),
    ],
)
def test_a_bad_budget_is_a_spec_error(
    write_repo: Callable[[dict[str, str]], Path], logs: str, expected: str
) -> None:
    root = write_repo(
        {
            "s.yaml": (
                "apiVersion: gitops-nodes/v1\nkind: Node\nmetadata:\n  name: web\nspec:\n"
                f"  image:\n    name: busybox\n    port: 8080\n  logs: {logs}\n"
            )
        }
    )
    with pytest.raises(SpecErrors) as caught:
        load_spec(root)
    assert [str(p) for p in caught.value.problems] == [expected]
