"""A node as a Swarm service, and Swarm tasks as instances: the pure half of the Swarm runtime.

Everything here turns values into Engine API documents and back, without calling the engine,
so it is tested without a Swarm.

A node is one replicated service whose tasks are its instances. The service carries the
node's image, command, env and resources, a health check that Docker runs inside each task,
Swarm's restart policy, and the rolling update the plan relies on: start-first, one task at a
time, rolled back when a new task fails. Its tasks are on the project's overlay network and
found by the balancer as `tasks.<service>` (DNS round robin, no virtual IP).

Instance statuses from task states (desired state, then the task's own):

| Swarm task                                    | state word  | status                      |
|-----------------------------------------------|-------------|-----------------------------|
| desired running; new ... ready (scheduling)   | created     | Created                     |
| desired running; starting (check not passed)  | starting    | Preparing, Unhealthy after  |
|                                               |             | its startTimeout            |
| desired running; running (check passed once)  | running     | Healthy (a task failing its |
|                                               |             | check is stopped, replaced) |
| desired running; complete, shutdown           | exited      | Unhealthy                   |
| desired running; failed, rejected, orphaned   | dead        | Unhealthy                   |
| desired shutdown/remove; still up to running  | removing    | Deleting                    |
| desired shutdown/remove; stopped              | (history: not an instance)  |
| any, on a node that is not ready (host down)  | lost        | Unhealthy; left out of plans |

Tasks have no index of their own (Swarm's slots are not renumbered after scaling down), so an
instance's index is its rank among its service's tasks, the serving ones first by slot: the
plan sees indexes 0..n-1 exactly when the service runs n tasks.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from gitops_nodes.errors import RuntimeFailure
from gitops_nodes.live import LOST, LiveInstance
from gitops_nodes.runtime import labels
from gitops_nodes.spec.hashing import canonical_json, log_budget
from gitops_nodes.spec.state import DesiredNode

NAME_LIMIT = 63  # service names are DNS labels (tasks.<service> must resolve)
NS = 1_000_000_000
TASK_CHECK_MIN_INTERVAL = 1.0  # each in-task check is a process exec: at most one a second
STOP_GRACE = 10.0  # seconds Swarm waits after SIGTERM before it kills a task
RESTART_DELAY = 1.0
UPDATE_MONITOR = 5.0  # after a new task runs, how long a failure of it still rolls back

# Swarm task states in their order; a task is up until it has passed "running".
TASK_STATES = (
    "new",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
    "running",
    "complete",
    "shutdown",
    "failed",
    "rejected",
    "remove",
    "orphaned",
)
_UP_TO_RUNNING = frozenset(TASK_STATES[: TASK_STATES.index("running") + 1])
_SCHEDULING = frozenset(TASK_STATES[: TASK_STATES.index("starting")])


def generic_gpus(node: str, gpus: int | str | tuple[str, ...]) -> list[dict[str, Any]]:
    """resources.gpus as a Swarm's generic resources of kind gpu (each node's engine
    advertises them with `node-generic-resources` in its daemon.json)."""
    if isinstance(gpus, tuple):
        return [{"NamedResourceSpec": {"Kind": "gpu", "Value": device}} for device in gpus]
    if gpus == "all":
        raise RuntimeFailure(
            f"node {node}: resources.gpus: all cannot be asked of a Swarm, whose tasks "
            "reserve generic resources by count or by id: write a number of GPUs or their ids"
        )
    return [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": int(gpus)}}]


def _bounded(name: str) -> str:
    """name, or when it is too long for a DNS label, a prefix of it and a digest."""
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: NAME_LIMIT - 9].rstrip('-')}-{digest}"


def service_name(project: str, node: str) -> str:
    """The service of a node; unique per project, since node names are."""
    return _bounded(f"{project}-{node}")


def balancer_name(project: str) -> str:
    """The balancer service ("--": no node's service name can end that way)."""
    return _bounded(f"{project}--balancer")


def network_name(project: str) -> str:
    """The overlay network the project's services share."""
    return _bounded(f"{project}--net")


def container_name(service: str, slot: int, task_id: str) -> str:
    """The name Swarm gives a replicated task's container."""
    return f"{service}.{slot}.{task_id}"


def health_command(port: int, path: str | None, timeout: float) -> list[str]:
    """The check Docker runs inside each task: GET path (2xx or 3xx passes) or a TCP connect
    to port on loopback. Images need /bin/sh and one of python3, wget or curl (python3 or nc
    for a TCP check); python3 comes first, gitops-nodes' own images have it."""
    seconds = f"{timeout:g}"
    whole = max(1, round(timeout))
    if path is None:
        script = (
            "import socket; "
            f'socket.create_connection(("127.0.0.1", {port}), timeout={seconds}).close()'
        )
        others = [("nc", f"nc -z -w {whole} 127.0.0.1 {port}")]
    else:
        script = (
            "import http.client, sys; "
            f'c = http.client.HTTPConnection("127.0.0.1", {port}, timeout={seconds}); '
            f'c.request("GET", {json.dumps(path)}); '
            "sys.exit(0 if 200 <= c.getresponse().status < 400 else 1)"
        )
        url = shlex.quote(f"http://127.0.0.1:{port}{path}")
        others = [
            ("wget", f"wget -q -O /dev/null -T {whole} {url}"),
            ("curl", f"curl -fsS -o /dev/null -m {seconds} {url}"),
        ]
    tools = [("python3", f"python3 -c {shlex.quote(script)}"), *others]
    lines = [f"command -v {tool} >/dev/null 2>&1 && exec {command}" for tool, command in tools]
    return ["CMD-SHELL", "; ".join([*lines, "exit 127"])]


# Secrets on a Swarm are Docker secrets: files at their paths, and env values as files here,
# exported by ENV_WRAPPER (run by /bin/sh before the image's own entrypoint and command).
SECRET_ENV_FOLDER = "/run/secrets/gitops-nodes-env"
ENV_WRAPPER = (
    f'for f in {SECRET_ENV_FOLDER}/*; do [ -f "$f" ] && export "${{f##*/}}=$(cat "$f")"; '
    'done; exec "$@"'
)


@dataclass(frozen=True)
class SecretMount:
    """A Docker secret a node's tasks mount: its id and name, and the file it becomes."""

    secret_id: str
    secret_name: str
    target: str


def node_secret_name(project: str, node: str, digest: str) -> str:
    """The Docker secret holding one of a node's values: named by the value's keyed digest,
    since a secret cannot change (a rotation is a new secret)."""
    return _bounded(f"{service_name(project, node)}--s-{digest[:16]}")


def node_secret_targets(node: DesiredNode) -> list[tuple[str, str, bytes]]:
    """(secret name, file in the task, value) for each of the node's secrets."""
    digests = dict(node.config.secret_env)
    files = dict(node.config.secret_files)
    found = []
    for name, value in node.secrets.env:
        found.append((digests[name], f"{SECRET_ENV_FOLDER}/{name}", value.data))
    for path, value in node.secrets.files:
        found.append((files[path], path, value.data))
    return found


def node_labels(project: str, node: DesiredNode) -> dict[str, str]:
    """The labels a node's service and each of its tasks carry (live state reads them back)."""
    return {
        labels.PROJECT: project,
        labels.ROLE: "node",
        labels.NODE: node.name,
        labels.SPEC_HASH: node.spec_hash,
        labels.CONFIG: canonical_json(node.config.as_dict()),
    }


def node_service_spec(
    project: str,
    node: DesiredNode,
    image: str,
    network: str,
    owner: str = "",
    secrets: Sequence[SecretMount] = (),
    image_run: tuple[list[str], list[str]] | None = None,
) -> dict[str, Any]:
    """The ServiceSpec of a node (the Engine API's document). image is where nodes get the
    node's image from: the local tag, or its name in a registry. owner (the state directory's
    owner id) labels the service alone: in the tasks' labels, a change of it would make Swarm
    replace every task of a service made before owner labels existed."""
    config = node.config
    check = node.health
    task_labels = node_labels(project, node)
    log_size, log_files = log_budget(config)
    container: dict[str, Any] = {
        "Image": image,
        "Env": [f"{key}={value}" for key, value in config.env],
        "Labels": task_labels,
        "Init": True,  # PID 1 that forwards SIGTERM, as the Docker runtime's containers have
        "StopGracePeriod": int(STOP_GRACE * NS),
        "Healthcheck": {
            "Test": health_command(check.port or config.port, check.path, check.timeout),
            "Interval": int(max(check.interval, TASK_CHECK_MIN_INTERVAL) * NS),
            "Timeout": int((check.timeout + 1.0) * NS),  # + the check process's own start
            "Retries": check.unhealthy_threshold,
            "StartPeriod": int(check.start_timeout * NS),
        },
    }
    if config.command is not None:
        container["Args"] = list(config.command)  # the image's CMD; Command is its entrypoint
    if secrets:
        container["Secrets"] = [
            {
                "SecretID": mount.secret_id,
                "SecretName": mount.secret_name,
                "File": {"Name": mount.target, "UID": "0", "GID": "0", "Mode": 0o444},
            }
            for mount in secrets
        ]
    if config.secret_env:
        # Env values come as files: the wrapper exports them, then runs what the image would
        # (image_run: its entrypoint and command, the node's command replacing the latter).
        entrypoint, command = image_run or ([], [])
        run = [*entrypoint, *(config.command if config.command is not None else command)]
        container["Command"] = ["/bin/sh", "-c", ENV_WRAPPER, "gitops-nodes-env"]
        container["Args"] = run
    limits: dict[str, int] = {}
    if config.cpus:
        limits["NanoCPUs"] = int(config.cpus * NS)
    if config.memory:
        limits["MemoryBytes"] = config.memory
    resources: dict[str, Any] = {"Limits": limits}
    if config.gpus is not None:
        resources["Reservations"] = {"GenericResources": generic_gpus(node.name, config.gpus)}
    rolling = {
        "Parallelism": 1,
        "Order": "start-first",
        "Monitor": int(UPDATE_MONITOR * NS),
        "MaxFailureRatio": 0,
    }
    return {
        "Name": service_name(project, node.name),
        "Labels": {**task_labels, **({labels.OWNER: owner} if owner else {})},
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": resources,
            "RestartPolicy": {
                "Condition": "any",
                "Delay": int(RESTART_DELAY * NS),
                "MaxAttempts": 0,
            },
            "Networks": [{"Target": network}],
            # Not in projection(): an explicit `logs` is in the CONFIG label, which is, and a
            # node without one gets the default budget on new services only (no update of
            # every service after an upgrade just to add it).
            "LogDriver": {
                "Name": "json-file",
                "Options": {"max-size": str(log_size), "max-file": str(log_files)},
            },
        },
        "Mode": {"Replicated": {"Replicas": node.instances}},
        "UpdateConfig": {**rolling, "FailureAction": "rollback"},
        "RollbackConfig": {**rolling, "FailureAction": "pause"},
        "EndpointSpec": {"Mode": "dnsrr"},
    }


def projection(spec: Mapping[str, Any], network_ids: Mapping[str, str]) -> str:
    """What of a ServiceSpec we set and compare: a service whose projection differs from the
    wanted one is updated. The engine echoes these fields as it was given them, except that
    it leaves out zeros and empty values (so both sides are compared without them) and stores
    networks by id (network_ids maps names to ids)."""
    template = spec.get("TaskTemplate") or {}
    container = template.get("ContainerSpec") or {}
    networks = sorted(
        network_ids.get(n.get("Target", ""), n.get("Target", ""))
        for n in template.get("Networks") or ()
    )
    picked = {
        "labels": spec.get("Labels") or {},
        "container": {
            key: container.get(key)
            for key in (
                "Image",
                "Args",
                "Env",
                "Labels",
                "Init",
                "StopGracePeriod",
                "Healthcheck",
                "Command",
            )
        },
        "limits": (template.get("Resources") or {}).get("Limits") or {},
        "restart": template.get("RestartPolicy") or {},
        "networks": networks,
        "mode": spec.get("Mode") or {},
        "update": spec.get("UpdateConfig") or {},
        "rollback": spec.get("RollbackConfig") or {},
        "endpoint": (spec.get("EndpointSpec") or {}).get("Mode") or "vip",
        "ports": (spec.get("EndpointSpec") or {}).get("Ports") or [],
        "secrets": [
            (s.get("SecretName"), (s.get("File") or {}).get("Name"))
            for s in container.get("Secrets") or ()
        ],
    }
    return canonical_json(_pruned(picked))


def _pruned(value: Any) -> Any:
    """value without the zeros, empty strings and empty collections the engine leaves out."""
    if isinstance(value, dict):
        kept = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (0, "", None, {}, []) or v is False}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def task_state(desired: str, current: str) -> str | None:
    """The state word of a task (the table in the module docstring); None for history."""
    if desired not in _UP_TO_RUNNING:
        return "removing" if current in _UP_TO_RUNNING else None
    if current in _SCHEDULING:
        return "created"
    if current in ("starting", "running"):
        return current
    return "exited" if current in ("complete", "shutdown") else "dead"


def task_address(task: Mapping[str, Any], network: str) -> str | None:
    """The task's address on the named network, once Swarm has allocated it."""
    for attachment in task.get("NetworksAttachments") or ():
        if (attachment.get("Network") or {}).get("Spec", {}).get("Name") != network:
            continue
        for address in attachment.get("Addresses") or ():
            return str(address).split("/")[0]
    return None


def parse_timestamp(text: str | None) -> float | None:
    """Seconds since the epoch from the engine's RFC 3339 time (nanoseconds, Z)."""
    if not text or text.startswith("0001"):
        return None
    head, _, rest = text.partition(".")
    fraction = "".join(c for c in rest if c.isdigit())[:6]
    stamp = head.rstrip("Z") + (f".{fraction}" if fraction else "") + "+00:00"
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class NodeHost:
    """A node of the swarm as tasks see it: its hostname, address, whether the manager
    counts it ready (its engine answers the manager's heartbeats), and whether Swarm places
    tasks on it (availability active, not paused or drained)."""

    hostname: str
    address: str
    ready: bool
    active: bool = True


def node_hosts(nodes: Iterable[Mapping[str, Any]], local_id: str = "") -> dict[str, NodeHost]:
    """The swarm's nodes (the Engine API's node list) by node id.

    A manager may report its address as 0.0.0.0 (it listens on every address): its manager
    address is used then, and 127.0.0.1 for the manager this runs against, when nothing
    better is known.
    """
    found = {}
    for node in nodes:
        node_id = str(node.get("ID", ""))
        status = node.get("Status") or {}
        address = str(status.get("Addr") or "")
        if address in ("", "0.0.0.0"):
            manager = str((node.get("ManagerStatus") or {}).get("Addr") or "")
            address = manager.rpartition(":")[0] if ":" in manager else manager
        if address in ("", "0.0.0.0"):
            address = "127.0.0.1" if node_id == local_id else ""
        hostname = str((node.get("Description") or {}).get("Hostname") or node_id)
        active = (node.get("Spec") or {}).get("Availability", "active") == "active"
        found[node_id] = NodeHost(hostname, address, status.get("State") == "ready", active)
    return found


def task_instances(
    service: str,
    tasks: Iterable[Mapping[str, Any]],
    network: str,
    owner: str = "",
    hosts: Mapping[str, NodeHost] | None = None,
) -> list[LiveInstance]:
    """One service's tasks as instances: history left out, ranked as the docstring says;
    owner is the service's owner label, which its tasks belong to; hosts (node_hosts) name
    each task's machine and tell the lost ones (None: not known, none lost)."""
    found: list[tuple[tuple[int, int, str], LiveInstance]] = []
    for task in tasks:
        status = task.get("Status") or {}
        state = task_state(str(task.get("DesiredState", "")), str(status.get("State", "")))
        container = (task.get("Spec") or {}).get("ContainerSpec") or {}
        task_labels = container.get("Labels") or {}
        node = task_labels.get(labels.NODE)
        if state is None or not node:
            continue
        host = (hosts or {}).get(str(task.get("NodeID", "")))
        if host is not None and not host.ready:
            state = LOST  # what the manager last heard of it is all it knows
        slot = int(task.get("Slot") or 0)
        config = labels.config_of(task_labels.get(labels.CONFIG))
        address = task_address(task, network)
        instance = LiveInstance(
            name=container_name(service, slot, str(task.get("ID", ""))),
            node=node,
            index=0,
            spec_hash=task_labels.get(labels.SPEC_HASH, ""),
            config=config,
            state=state,
            port=config.port if config is not None and address is not None else None,
            started_at=parse_timestamp(task.get("CreatedAt")),
            host=address or "",
            owner=owner,
            hostname=host.hostname if host is not None else "",
        )
        leaving = 1 if state in ("removing", LOST) else 0
        found.append(((leaving, slot, str(task.get("CreatedAt", ""))), instance))
    found.sort(key=lambda pair: pair[0])
    return [replace(instance, index=rank) for rank, (_, instance) in enumerate(found)]


def task_id(name: str) -> str:
    """The task id in an instance name (service.slot.task)."""
    return name.rsplit(".", 1)[-1]
