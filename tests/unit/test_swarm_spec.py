"""The Swarm runtime's pure half: a node as a ServiceSpec, tasks as instances and statuses."""

from __future__ import annotations

import http.server
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from balancer.table import HealthSettings
from gitops_nodes.diff import diff
from gitops_nodes.health import Probe, instance_status
from gitops_nodes.live import LOST, LiveState
from gitops_nodes.runtime import labels
from gitops_nodes.runtime.swarm_images import (
    ImageShipper,
    engine_url,
    other_nodes,
    registry_reference,
)
from gitops_nodes.runtime.swarm_spec import (
    NAME_LIMIT,
    TASK_CHECK_MIN_INTERVAL,
    NodeHost,
    balancer_name,
    health_command,
    network_name,
    node_hosts,
    node_service_spec,
    projection,
    service_name,
    task_instances,
    task_state,
)
from gitops_nodes.spec.hashing import InstanceConfig, canonical_json, spec_hash
from gitops_nodes.spec.models import HealthCheck
from gitops_nodes.spec.settings import SwarmSettings
from gitops_nodes.spec.state import DesiredNode, DesiredState, Source

CONFIG = InstanceConfig(
    image="gitops-nodes/build:abc",
    port=8080,
    command=("python3", "/app/server.py"),
    env=(("VERSION", "2"),),
    cpus=0.5,
    memory=128 * 2**20,
)


def desired(instances: int = 3, interval: str = "200ms") -> DesiredNode:
    check = HealthCheck.model_validate(
        {"path": "/healthz", "interval": interval, "timeout": "1s", "startTimeout": "15s"}
    )
    return DesiredNode(
        name="api",
        config=CONFIG,
        spec_hash=spec_hash(CONFIG),
        instances=instances,
        min_healthy=1,
        health_check=check,
        build=None,
        source=Source("spec.yaml", 0),
    )


def task(
    slot: int,
    state: str,
    desired_state: str = "running",
    created: str = "2026-01-01T00:00:00.5Z",
    address: str | None = "10.0.1.3/24",
    node_id: str = "n1",
) -> dict[str, Any]:
    node = desired()
    attachments = []
    if address is not None:
        attachments = [{"Network": {"Spec": {"Name": "p--net"}}, "Addresses": [address]}]
    return {
        "ID": f"task{slot}{state}",
        "NodeID": node_id,
        "Slot": slot,
        "DesiredState": desired_state,
        "CreatedAt": created,
        "Status": {"State": state},
        "Spec": {
            "ContainerSpec": {
                "Labels": {
                    labels.PROJECT: "p",
                    labels.NODE: "api",
                    labels.SPEC_HASH: node.spec_hash,
                    labels.CONFIG: canonical_json(CONFIG.as_dict()),
                }
            }
        },
        "NetworksAttachments": attachments,
    }


# -- statuses from task states (the table in swarm_spec's docstring) ---------------------------


@pytest.mark.parametrize(
    ("desired_state", "state", "word", "status"),
    [
        ("running", "pending", "created", "Created"),
        ("running", "preparing", "created", "Created"),
        ("running", "starting", "starting", "Preparing"),
        ("running", "running", "running", "Healthy"),
        ("running", "complete", "exited", "Unhealthy"),
        ("running", "failed", "dead", "Unhealthy"),
        ("running", "rejected", "dead", "Unhealthy"),
        ("shutdown", "running", "removing", "Deleting"),
        ("shutdown", "starting", "removing", "Deleting"),
        ("ready", "starting", "starting", "Preparing"),  # start-first: not yet told to run
    ],
)
def test_task_states_map_onto_design_statuses(
    desired_state: str, state: str, word: str, status: str
) -> None:
    (instance,) = task_instances("p-api", [task(1, state, desired_state)], "p--net")
    assert instance.state == word
    found = Probe(True, True, "ok") if word == "running" else None
    young = (instance.started_at or 0) + 1
    assert instance_status(instance, found, young, HealthSettings(start_timeout=15)) == status


def test_a_starting_task_past_its_start_timeout_is_unhealthy() -> None:
    (instance,) = task_instances("p-api", [task(1, "starting")], "p--net")
    late = (instance.started_at or 0) + 16
    assert instance_status(instance, None, late, HealthSettings(start_timeout=15)) == "Unhealthy"


def test_stopped_tasks_of_the_past_are_history_not_instances() -> None:
    assert task_state("shutdown", "shutdown") is None
    assert task_state("shutdown", "failed") is None
    assert task_instances("p-api", [task(1, "complete", "shutdown")], "p--net") == []


def test_instances_are_ranked_serving_first_by_slot_with_names_hosts_and_ports() -> None:
    tasks = [
        task(4, "running", address="10.0.1.9/24"),
        task(1, "running", "shutdown", address="10.0.1.3/24"),  # being replaced
        task(1, "starting", address="10.0.1.8/24"),
        task(2, "running", address=None),  # not allocated yet
    ]

    found = task_instances("p-api", tasks, "p--net")

    assert [(i.index, i.state, i.host, i.port) for i in found] == [
        (0, "starting", "10.0.1.8", 8080),
        (1, "running", "", None),
        (2, "running", "10.0.1.9", 8080),
        (3, "removing", "10.0.1.3", 8080),
    ]
    assert found[0].name == "p-api.1.task1starting"
    assert found[0].spec_hash == spec_hash(CONFIG) and found[0].config == CONFIG
    assert found[0].started_at == pytest.approx(1767225600.5)


# -- several hosts: where a task runs, and tasks on a host that is down ----------------------

HOSTS = {
    "n1": NodeHost("lab-manager", "10.231.0.11", True),
    "n2": NodeHost("lab-worker-1", "10.231.0.12", True),
    "n3": NodeHost("lab-worker-2", "10.231.0.13", False),
}


def test_each_instance_names_its_host_and_the_tasks_of_a_host_that_is_down_are_lost() -> None:
    tasks = [
        task(1, "running", "shutdown", node_id="n3"),  # lost; Swarm already replaced it
        task(2, "running", node_id="n3"),  # lost; not replaced yet
        task(3, "running", node_id="n1"),
        task(4, "starting", node_id="n2"),
    ]

    found = task_instances("p-api", tasks, "p--net", hosts=HOSTS)

    assert [(i.index, i.state, i.hostname) for i in found] == [
        (0, "running", "lab-manager"),
        (1, "starting", "lab-worker-1"),
        (2, LOST, "lab-worker-2"),  # after the ones that serve, like leaving ones
        (3, LOST, "lab-worker-2"),
    ]
    assert not found[2].alive
    assert instance_status(found[2], None, 0.0, HealthSettings()) == "Unhealthy"
    assert [i.hostname for i in task_instances("p-api", tasks[2:], "p--net")] == ["", ""]


def test_plans_leave_lost_instances_to_swarm() -> None:
    """Swarm replaces a lost task itself and stops it when its host is back: a plan that
    removed it would wait for a host that may never return."""
    tasks = [
        task(1, "running", "shutdown", node_id="n3"),
        task(2, "running", node_id="n1"),
        task(3, "running", node_id="n2"),
    ]
    instances = task_instances("p-api", tasks, "p--net", hosts=HOSTS)
    want = desired(instances=2)
    spec = DesiredState(Path("."), MappingProxyType({"api": want}), MappingProxyType({}))

    (change,) = diff(spec, LiveState("p", tuple(instances))).nodes

    lost = next(i.name for i in instances if i.state == LOST)
    assert all(c.old != lost for c in change.instances)
    assert change.before.get("instances") == 2  # the two that run, not the lost one


def test_node_hosts_finds_each_nodes_address_even_when_a_manager_reports_every_address() -> None:
    nodes = [
        {
            "ID": "me",
            "Status": {"State": "ready", "Addr": "0.0.0.0"},
            "ManagerStatus": {"Addr": "10.231.0.11:2377"},
            "Description": {"Hostname": "lab-manager"},
        },
        {"ID": "w1", "Status": {"State": "down", "Addr": "10.231.0.12"}},
        {"ID": "solo", "Status": {"State": "ready", "Addr": "0.0.0.0"}},
    ]

    hosts = node_hosts(nodes, local_id="solo")

    assert hosts == {
        "me": NodeHost("lab-manager", "10.231.0.11", True),
        "w1": NodeHost("w1", "10.231.0.12", False),  # no hostname known: its id
        "solo": NodeHost("solo", "127.0.0.1", True),
    }


class _Engine:
    """The manager's engine as ImageShipper reads it: an image, and nodes that change."""

    def __init__(self) -> None:
        self.nodes_now: list[dict[str, Any]] = [_ready("me"), _ready("w1")]

    def inspect_image(self, image: str) -> dict[str, Any]:
        return {"Id": image}

    def nodes(self) -> list[dict[str, Any]]:
        return self.nodes_now


def _ready(node_id: str) -> dict[str, Any]:
    return {"ID": node_id, "Status": {"State": "ready", "Addr": f"10.0.0.{len(node_id)}"}}


def test_a_node_that_joins_later_gets_the_images_at_the_next_ship(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = _Engine()
    shipper = ImageShipper(engine, SwarmSettings(), "me")
    loaded: list[tuple[str, str]] = []
    monkeypatch.setattr(shipper, "_load_into", lambda node, image: loaded.append((node.id, image)))

    shipper.ship("gitops-nodes/build:abc")
    shipper.ship("gitops-nodes/build:abc")  # nothing new: nothing loaded again
    engine.nodes_now.append(_ready("w2"))  # a worker joins
    shipper.ship("gitops-nodes/build:abc")

    assert loaded == [("w1", "gitops-nodes/build:abc"), ("w2", "gitops-nodes/build:abc")]


# -- the service ----------------------------------------------------------------------------


def test_a_node_service_rolls_start_first_one_at_a_time_and_rolls_back() -> None:
    spec = node_service_spec("p", desired(3), "registry.example/gitops-nodes/build:abc", "p--net")

    assert spec["Name"] == "p-api"
    assert spec["Mode"] == {"Replicated": {"Replicas": 3}}
    update = spec["UpdateConfig"]
    assert (update["Order"], update["Parallelism"], update["FailureAction"]) == (
        "start-first",
        1,
        "rollback",
    )
    assert spec["RollbackConfig"]["Order"] == "start-first"
    assert spec["EndpointSpec"] == {"Mode": "dnsrr"}  # tasks.<service>, no virtual IP
    template = spec["TaskTemplate"]
    container = template["ContainerSpec"]
    assert container["Image"] == "registry.example/gitops-nodes/build:abc"
    assert container["Args"] == ["python3", "/app/server.py"]  # CMD, not the entrypoint
    assert container["Env"] == ["VERSION=2"]
    assert container["Labels"][labels.SPEC_HASH] == spec_hash(CONFIG)
    assert spec["Labels"][labels.ROLE] == "node"
    assert template["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 134217728}
    assert template["RestartPolicy"]["Condition"] == "any"
    assert template["Networks"] == [{"Target": "p--net"}]
    check = container["Healthcheck"]
    assert check["Interval"] == int(TASK_CHECK_MIN_INTERVAL * 1e9)  # 200ms asked, floored
    assert check["StartPeriod"] == 15 * 10**9 and check["Retries"] == 3


def test_projection_ignores_what_the_engine_adds_and_sees_what_changed() -> None:
    spec = node_service_spec("p", desired(3), "img", "p--net")
    echoed = {**spec, "TaskTemplate": {**spec["TaskTemplate"], "ForceUpdate": 0}}
    echoed["TaskTemplate"]["Networks"] = [{"Target": "n1d"}]  # stored by id
    ids = {"p--net": "n1d"}

    assert projection(echoed, ids) == projection(spec, ids)
    assert projection(node_service_spec("p", desired(4), "img", "p--net"), ids) != projection(
        spec, ids
    )


def test_names_stay_dns_labels_and_never_collide_with_the_balancer() -> None:
    long = "n" * 60
    assert len(service_name("project", long)) <= NAME_LIMIT
    assert service_name("project", long) != service_name("project", long + "x")
    assert balancer_name("p") == "p--balancer" != service_name("p", "balancer")
    assert network_name("p") == "p--net"


# -- the in-task health check ------------------------------------------------------------------


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_port(serve_http: Callable[[type[http.server.BaseHTTPRequestHandler]], int]) -> int:
    return serve_http(_Healthz)


def run_check(command: list[str]) -> int:
    assert command[0] == "CMD-SHELL"
    return subprocess.run(["sh", "-c", command[1]], capture_output=True, timeout=20).returncode


def test_the_in_task_check_passes_and_fails_as_the_balancer_would(http_port: int) -> None:
    assert run_check(health_command(http_port, "/healthz", 1.0)) == 0
    assert run_check(health_command(http_port, "/broken", 1.0)) != 0
    assert run_check(health_command(http_port, None, 1.0)) == 0


def test_the_in_task_check_fails_on_a_closed_port(http_port: int) -> None:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as s:
        closed = s.server_address[1]
    assert run_check(health_command(closed, "/healthz", 1.0)) != 0
    assert run_check(health_command(closed, None, 1.0)) != 0


# -- images on other nodes -------------------------------------------------------------------


def test_only_our_images_go_to_the_registry() -> None:
    assert registry_reference("gitops-nodes/build:abc", "reg:5000/ml") == (
        "reg:5000/ml/gitops-nodes/build:abc"
    )
    assert registry_reference("nginx:1.27", "reg:5000/ml") == "nginx:1.27"
    assert registry_reference("gitops-nodes/build:abc", None) == "gitops-nodes/build:abc"


def test_images_are_loaded_into_the_other_ready_nodes() -> None:
    nodes = [
        {"ID": "me", "Status": {"State": "ready", "Addr": "10.0.0.1"}},
        {
            "ID": "w1",
            "Status": {"State": "ready", "Addr": "10.0.0.2"},
            "Description": {"Hostname": "worker-1"},
        },
        {"ID": "w2", "Status": {"State": "down", "Addr": "10.0.0.3"}},
        {
            "ID": "w3",
            "Status": {"State": "ready", "Addr": "10.0.0.4"},
            "Spec": {"Availability": "drain"},
        },
    ]

    (worker,) = other_nodes(nodes, "me")

    assert (worker.hostname, worker.address) == ("worker-1", "10.0.0.2")
    assert engine_url(worker, {}) == "ssh://10.0.0.2"
    assert engine_url(worker, {"worker-1": "tcp://10.0.0.2:2376"}) == "tcp://10.0.0.2:2376"


def test_an_ssh_engine_url_is_one_the_docker_sdk_takes() -> None:
    # A Swarm without a registry loads images into its nodes over ssh://: before, the SDK
    # refused every such URL ("Install paramiko package to enable ssh:// support"), which
    # the message blamed on the node's engine. Made without connecting (a version given).
    import docker

    client = docker.APIClient(base_url="ssh://root@127.0.0.1", use_ssh_client=True, version="1.41")
    client.close()
