"""spec_hash: one digest decides when instances are recreated, so plan, apply and status agree."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gitops_nodes.spec.hashing import (
    DEFAULT_LOG_BUDGET,
    InstanceConfig,
    canonical_json,
    log_budget,
    spec_hash,
)
from gitops_nodes.spec.load import load_spec

BASE = InstanceConfig(
    image="busybox:1.36",
    port=8080,
    command=("httpd", "-f"),
    env=(("A", "1"), ("B", "2")),
    cpus=0.5,
    memory=256 * 2**20,
)


def test_equal_configs_hash_equally_and_the_hash_is_a_sha256() -> None:
    twin = InstanceConfig(**{f: getattr(BASE, f) for f in BASE.__dataclass_fields__})
    assert twin is not BASE
    assert spec_hash(twin) == spec_hash(BASE)
    assert len(spec_hash(BASE)) == 64
    int(spec_hash(BASE), 16)


@pytest.mark.parametrize(
    "changed",
    [
        replace(BASE, image="busybox:1.37"),
        replace(BASE, port=8081),
        replace(BASE, command=("httpd", "-f", "-v")),
        replace(BASE, command=None),
        replace(BASE, command=()),
        replace(BASE, env=(("A", "1"), ("B", "3"))),
        replace(BASE, env=(("A", "1"),)),
        replace(BASE, env=(("A", "1"), ("B", "2"), ("C", ""))),
        replace(BASE, cpus=1.0),
        replace(BASE, cpus=None),
        replace(BASE, memory=512 * 2**20),
        replace(BASE, memory=None),
    ],
    ids=[
        "image",
        "port",
        "command",
        "no command",
        "empty command",
        "env value",
        "env removed",
        "env added",
        "cpus",
        "no cpus",
        "memory",
        "no memory",
    ],
)
def test_any_container_field_changes_the_hash(changed: InstanceConfig) -> None:
    assert spec_hash(changed) != spec_hash(BASE)


def test_env_order_does_not_matter() -> None:
    assert spec_hash(replace(BASE, env=(("B", "2"), ("A", "1")))) == spec_hash(BASE)


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": [1, {"y": 2, "x": 1}], "a": "é"}) == (
        '{"a":"é","b":[1,{"x":1,"y":2}]}'
    )


@pytest.mark.parametrize(
    "config",
    [
        BASE,
        replace(BASE, env=(("B", "2"), ("A", "1"))),
        InstanceConfig("x", 1, None, (), None, None),
        InstanceConfig("x", 1, (), (("K", "true"),), 2.0, 1),
    ],
    ids=["full", "env unsorted", "bare", "empty command"],
)
def test_config_round_trips_through_a_json_label(config: InstanceConfig) -> None:
    label = json.dumps(config.as_dict())  # what the container's label holds

    back = InstanceConfig.from_dict(json.loads(label))

    assert spec_hash(back) == spec_hash(config)
    assert back.as_dict() == config.as_dict()


def test_loaded_node_hash_survives_the_label_round_trip(
    write_repo: Callable[[dict[str, str]], Path],
) -> None:
    root = write_repo(
        {
            "n.yaml": """
            apiVersion: gitops-nodes/v1
            kind: Node
            metadata: {name: web}
            spec:
              image: {name: busybox, port: 8080, command: [httpd, -f]}
              env: {Z: "1", A: "true", M: "0.5"}
              resources: {cpus: 1, memory: 1Gi}
            """
        }
    )
    node = load_spec(root).nodes["web"]

    assert node.spec_hash == spec_hash(node.config)
    back = InstanceConfig.from_dict(json.loads(json.dumps(node.config.as_dict())))
    assert back == node.config
    assert spec_hash(back) == node.spec_hash


def test_equal_specs_written_differently_hash_equally(
    write_repo: Callable[[dict[str, str]], Path],
) -> None:
    root = write_repo(
        {
            "a.yaml": """
            apiVersion: gitops-nodes/v1
            kind: Node
            metadata: {name: a}
            spec:
              image: {name: busybox, port: 80}
              env: {B: "2", A: "1"}
              resources: {memory: 1Gi, cpus: 1}
              instances: 3
            """,
            "b.yaml": """
            kind: Node
            apiVersion: gitops-nodes/v1
            metadata: {name: b}
            spec:
              resources: {cpus: 1.0, memory: 1073741824}
              env: {A: '1', B: "2"}
              image: {port: 80, name: busybox}
              healthCheck: {path: /other}
            """,
        }
    )
    nodes = load_spec(root).nodes
    # instances and health checks are settings, not what a container is made from
    assert nodes["a"].spec_hash == nodes["b"].spec_hash


# -- logs: fixed at creation, so hashed; unset keeps the hash of before `logs` existed --------


def test_a_config_without_logs_keeps_the_hash_it_had_before_logs_existed() -> None:
    # The hash of BASE as computed before `logs` was added: an upgrade must not recreate
    # every container of a node that does not set it.
    assert spec_hash(BASE) == "e91d0f65fc0ecc1395c76aadfb2dbbcbb0f05a7a5e489ac72afbee95ba5fbb7c"
    assert "logs" not in BASE.as_dict()


def test_setting_or_changing_logs_changes_the_hash() -> None:
    explicit_default = replace(BASE, logs=DEFAULT_LOG_BUDGET)
    smaller = replace(BASE, logs=(1 << 20, 2))

    assert len({spec_hash(BASE), spec_hash(explicit_default), spec_hash(smaller)}) == 3
    assert log_budget(BASE) == log_budget(explicit_default) == (10 * 2**20, 3)
    assert log_budget(smaller) == (1 << 20, 2)
    back = InstanceConfig.from_dict(json.loads(json.dumps(smaller.as_dict())))
    assert back == smaller and spec_hash(back) == spec_hash(smaller)


def test_the_spec_logs_setting_reaches_the_config(
    write_repo: Callable[[dict[str, str]], Path],
) -> None:
    node = """
            apiVersion: gitops-nodes/v1
            kind: Node
            metadata: {name: %s}
            spec:
              image: {name: busybox, port: 8080}
              %s
            """
    root = write_repo(
        {
            "a.yaml": node % ("a", "logs: {maxSize: 2Mi, maxFiles: 5}"),
            "b.yaml": node % ("b", "logs: {maxFiles: 1}"),
            "c.yaml": node % ("c", ""),
        }
    )
    nodes = load_spec(root).nodes

    assert nodes["a"].config.logs == (2 * 2**20, 5)
    assert nodes["b"].config.logs == (10 * 2**20, 1)
    assert nodes["c"].config.logs is None
