"""The balancer as a Swarm service of the project, and how apply talks to it.

One balancer task on every node (global mode), on the project's overlay network, its data
and admin ports published in host mode on each node (`swarm.port`, `swarm.adminPort`): users
call any node's data port. It finds the nodes' instances by DNS (balancer/discovery.py) and
gets each routing table from apply over its admin port (`PUT /-/table`, balancer/push.py),
authenticated with a token that apply keeps in the project's state directory and Swarm hands
the service as a secret; apply reads its reports the same way (`GET /-/ack`), and, when its
state directory has no table (lost with it), the table the balancers serve (`GET /-/table`).

Published ports: Swarm's host-mode ports bind every address of a node (the Engine API has no
host address for them), so the admin port is reachable wherever the node is: its table
endpoint refuses requests without the token, and it should be firewalled like any admin port.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from balancer.table import RoutingTable, TableError
from gitops_nodes.errors import RuntimeFailure
from gitops_nodes.runtime import labels
from gitops_nodes.runtime.balancer_image import ADMIN_PORT, DATA_PORT, TOKEN_TARGET
from gitops_nodes.runtime.swarm_spec import NS, balancer_name, health_command
from gitops_nodes.spec.settings import SwarmSettings
from gitops_nodes.statedir import SWARM_TOKEN_FILE, BalancerAck, StateDir

TOKEN_FILE = SWARM_TOKEN_FILE
HTTP_TIMEOUT = 5.0
PUBLISH_RETRY = 10.0  # seconds a table push is retried on a balancer that does not take it
ENDPOINTS_TTL = 2.0  # the balancers' addresses, cached between acks polls
BALANCER_GRACE = 35.0  # the balancer drains for up to 30 s on SIGTERM


def read_token(state: StateDir) -> str | None:
    """The project's push token as the state directory keeps it, or None."""
    try:
        return (state.path / TOKEN_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def read_or_make_token(state: StateDir, held: Callable[[], str | None] | None = None) -> str:
    """The project's push token, made (random, 0600) the first time; when the state
    directory has none, held() may give the one the running balancers already hold."""
    path = state.path / TOKEN_FILE
    token = read_token(state)
    if token:
        return token
    token = (held() if held is not None else None) or secrets.token_hex(32)
    state.path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def secret_name(project: str, token: str) -> str:
    """Secrets cannot change: a new token is a new secret, named by the token's digest."""
    return f"{project}--token-{hashlib.sha256(token.encode()).hexdigest()[:12]}"


def balancer_service_spec(
    project: str,
    image: str,
    network: str,
    secret: tuple[str, str],
    settings: SwarmSettings,
) -> dict[str, Any]:
    """The balancer's ServiceSpec; secret is (id, name)."""
    role = {labels.PROJECT: project, labels.ROLE: "balancer"}
    return {
        "Name": balancer_name(project),
        "Labels": role,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": image,
                "Labels": role,
                "Init": True,
                "StopGracePeriod": int(BALANCER_GRACE * NS),
                "Healthcheck": {
                    "Test": health_command(DATA_PORT, "/-/healthz", 1.0),
                    "Interval": int(1 * NS),
                    "Timeout": int(2 * NS),
                    "Retries": 3,
                    "StartPeriod": int(30 * NS),
                },
                "Secrets": [
                    {
                        "SecretID": secret[0],
                        "SecretName": secret[1],
                        "File": {"Name": TOKEN_TARGET, "UID": "0", "GID": "0", "Mode": 0o400},
                    }
                ],
            },
            "RestartPolicy": {"Condition": "any", "Delay": int(1 * NS), "MaxAttempts": 0},
            "Networks": [{"Target": network}],
        },
        "Mode": {"Global": {}},
        # Host-mode ports cannot be bound twice on a node: the old task goes first.
        "UpdateConfig": {
            "Parallelism": 1,
            "Order": "stop-first",
            "FailureAction": "rollback",
            "Monitor": int(5 * NS),
            "MaxFailureRatio": 0,
        },
        "EndpointSpec": {
            "Mode": "dnsrr",
            "Ports": [
                _host_port(DATA_PORT, settings.port),
                _host_port(ADMIN_PORT, settings.admin_port),
            ],
        },
    }


def _host_port(target: int, published: int) -> dict[str, Any]:
    return {
        "Protocol": "tcp",
        "TargetPort": target,
        "PublishedPort": published,
        "PublishMode": "host",
    }


class Refused(RuntimeFailure):
    """A balancer answered, and said no (a wrong token, a table it cannot read)."""


class SwarmBalancers:
    """The balancer service's tasks, as apply's BalancerFleet: pushes and reports over HTTP."""

    def __init__(self, endpoints: Callable[[], list[str]], token: str) -> None:
        self.find = endpoints  # "address:admin port" of every running balancer task
        self.token = token
        self.cached: tuple[float, list[str]] = (0.0, [])

    def endpoints(self, fresh: bool = False) -> list[str]:
        stamp, found = self.cached
        if fresh or time.monotonic() - stamp > ENDPOINTS_TTL:
            found = self.find()
            self.cached = (time.monotonic(), found)
        return found

    def publish(self, table: RoutingTable) -> None:
        body = json.dumps(table.to_json()).encode()
        targets = self.endpoints(fresh=True)
        if not targets:
            raise RuntimeFailure(
                "no balancer task of the project runs on the swarm to take the routing table"
            )
        for target in targets:
            self._push(target, body, table.generation)

    def _push(self, target: str, body: bytes, generation: int) -> None:
        deadline = time.monotonic() + PUBLISH_RETRY
        while True:
            try:
                self._call("PUT", target, "/-/table", body)
                return
            except RuntimeFailure as exc:
                if isinstance(exc, Refused) or time.monotonic() >= deadline:
                    raise RuntimeFailure(
                        f"the balancer at {target} did not take table generation {generation}: "
                        f"{exc}"
                    ) from exc
            time.sleep(0.2)  # a balancer task restarting: try again, within the deadline

    def acks(self) -> list[BalancerAck]:
        found = []
        for target in self.endpoints():
            try:
                data = json.loads(self._call("GET", target, "/-/ack"))
                found.append(
                    BalancerAck(
                        int(data.get("pid", 0)),
                        int(data["generation"]),
                        {str(k): int(v) for k, v in dict(data["draining"]).items()},
                        frozenset(str(i) for i in data.get("healthy", ())),
                        where=target,
                    )
                )
            except (RuntimeFailure, ValueError, KeyError, TypeError):
                continue  # not answering now (restarting): like a balancer that went away
        return found

    def sync(self, table: RoutingTable | None) -> None:
        if table is None:
            return
        behind = {a.where for a in self.acks() if a.generation < table.generation}
        if behind:
            body = json.dumps(table.to_json()).encode()
            for target in sorted(behind):
                self._push(target, body, table.generation)

    def served(self) -> RoutingTable | None:
        """The newest table any running balancer serves (None when none answers or none was
        ever given one): what a state directory that lost its table starts from."""
        newest: RoutingTable | None = None
        for target in self.endpoints(fresh=True):
            try:
                table = RoutingTable.from_json(json.loads(self._call("GET", target, "/-/table")))
            except (RuntimeFailure, ValueError, TableError):
                continue  # not answering now, or an older balancer without the endpoint
            if table.generation > 0 and (newest is None or table.generation > newest.generation):
                newest = table
        return newest

    def ready(self) -> bool:
        """Whether every running balancer task answers (with the right token)."""
        targets = self.endpoints(fresh=True)
        return bool(targets) and len(self.acks()) == len(targets)

    def _call(self, method: str, target: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(
            f"http://{target}{path}",
            data=body,
            method=method,
            headers={
                "authorization": f"Bearer {self.token}",
                "content-type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise Refused(f"{method} {path} answered {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RuntimeFailure(f"{method} {path} failed: {exc}") from exc
