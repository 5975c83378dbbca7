"""The Runtime on a Docker Swarm: each node a service, its instances the service's tasks.

Swarm, not apply, starts, replaces and retires tasks: `prepare_node` writes the node's
service (spec and replica count, swarm_spec.py) once per apply, and Swarm then rolls it
(start-first, one task at a time, rolled back on failure). The plan's instance steps follow
what Swarm does: a create step takes the next new task Swarm starts, a wait step waits until
Swarm runs it (its health check passed inside the task), a publish step waits until every
balancer counts it Healthy (they find tasks by DNS), a drain step waits until Swarm retires
the old task (or, scaling down, the one Swarm picked in its place) and the balancers have
finished its requests, a remove step until it has stopped.

Images are built on the manager (the engine this talks to) as on one host, then shipped to
the other nodes (swarm_images.py). The balancer is a service too (swarm_balancer.py).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from docker.errors import APIError, NotFound

from balancer.table import HealthSettings, RoutingTable
from gitops_nodes import pyimage
from gitops_nodes.errors import RuntimeFailure, RuntimeUnavailable
from gitops_nodes.fleet import BalancerFleet
from gitops_nodes.health import Probe
from gitops_nodes.live import LiveInstance, Ownership
from gitops_nodes.runtime import balancer_image, labels
from gitops_nodes.runtime.balancer_image import TOKEN_TARGET
from gitops_nodes.runtime.docker import ENGINE_ERRORS, DockerRuntime, engine_error
from gitops_nodes.runtime.swarm_balancer import (
    TOKEN_FILE,
    SwarmBalancers,
    balancer_service_spec,
    read_or_make_token,
    read_token,
    secret_name,
)
from gitops_nodes.runtime.swarm_images import ImageShipper
from gitops_nodes.runtime.swarm_spec import (
    STOP_GRACE,
    UPDATE_MONITOR,
    NodeHost,
    SecretMount,
    balancer_name,
    network_name,
    node_hosts,
    node_secret_name,
    node_secret_targets,
    node_service_spec,
    parse_timestamp,
    projection,
    service_name,
    task_id,
    task_instances,
)
from gitops_nodes.spec.settings import SwarmSettings
from gitops_nodes.spec.state import BuildRequest, DesiredNode
from gitops_nodes.statedir import StateDir

POLL = 0.1  # seconds between reads of task states while following Swarm
NEW_TASK_MARGIN = 30.0  # beyond a node's start timeout, for Swarm to schedule a new task
STOPPED_WITHIN = STOP_GRACE + 20.0  # Docker's 2 s before SIGTERM, the grace, and slack
READY_WITHIN = 120.0  # for the balancer service's tasks to answer
GONE_WITHIN = 60.0  # for removed services' containers and networks to go
HOSTS_TTL = 1.0  # the swarm's nodes, read again at most this often (waits poll tasks faster)
_UP = frozenset(
    ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running")
)


class SwarmRuntime(DockerRuntime):
    """Instances as tasks of one Swarm service per node, through a manager's engine.

    Images are the engine's as on one host (the inherited part); instances, the project's
    network and its balancer are Swarm objects, all labelled with the project.
    """

    name = "swarm"

    def __init__(self, settings: SwarmSettings | None = None, client: Any | None = None) -> None:
        super().__init__(client)
        self.settings = settings or SwarmSettings()
        try:
            swarm = self.api.info().get("Swarm") or {}
        except ENGINE_ERRORS as exc:
            raise engine_error("reading the engine's swarm state failed", exc) from exc
        if swarm.get("LocalNodeState") != "active":
            raise RuntimeUnavailable(
                "this Docker engine is not part of a swarm; `docker swarm init` makes it a "
                "one-node swarm, or point DOCKER_HOST at a swarm manager"
            )
        if not swarm.get("ControlAvailable"):
            raise RuntimeUnavailable(
                "this Docker engine is a swarm worker; point DOCKER_HOST at a swarm manager"
            )
        self.node_id = str(swarm.get("NodeID", ""))
        self.images = ImageShipper(self.api, self.settings, self.node_id)
        self.lock = threading.Lock()
        self.baseline: dict[str, set[str]] = {}  # service -> its tasks before prepare_node
        self.prepared_at: dict[str, float] = {}  # service -> when prepare_node updated it
        self.claimed: set[str] = set()  # new tasks handed out by create_instance
        self.owners: dict[str, str] = {}  # service id -> its owner label (_owner_of)
        self.retired: set[str] = set()  # tasks handed out by stop_instance as leaving
        self.hosts_read: tuple[float, dict[str, NodeHost]] = (-HOSTS_TTL, {})

    # -- reading ----------------------------------------------------------------------------

    def _hosts(self, fresh: bool = False) -> dict[str, NodeHost]:
        """The swarm's nodes by id (hostname, address, ready), read at most every HOSTS_TTL
        unless fresh: a node may have just gone or come."""
        stamp, hosts = self.hosts_read
        if not fresh and time.monotonic() - stamp < HOSTS_TTL:
            return hosts
        try:
            hosts = node_hosts(self.api.nodes(), self.node_id)
        except ENGINE_ERRORS as exc:
            raise engine_error("listing the swarm's nodes failed", exc) from exc
        self.hosts_read = (time.monotonic(), hosts)
        return hosts

    def host_name(self) -> str:
        return ""  # each task names its own node (LiveInstance.hostname)

    def _services(self, project: str, role: str) -> list[dict[str, Any]]:
        selector = [f"{labels.PROJECT}={project}", f"{labels.ROLE}={role}"]
        try:
            found: list[dict[str, Any]] = self.api.services(filters={"label": selector})
        except ENGINE_ERRORS as exc:
            raise engine_error("listing services failed", exc) from exc
        return found

    def _service(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.api.inspect_service(name)
        except NotFound:
            return None
        except ENGINE_ERRORS as exc:
            raise engine_error(f"inspecting service {name} failed", exc) from exc
        return found

    def _tasks(self, service_ids: list[str]) -> list[dict[str, Any]]:
        if not service_ids:
            return []
        try:
            tasks: list[dict[str, Any]] = self.api.tasks(filters={"service": service_ids})
        except ENGINE_ERRORS as exc:
            raise engine_error("listing tasks failed", exc) from exc
        wanted = set(service_ids)
        return [t for t in tasks if t.get("ServiceID") in wanted]

    def _task(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.api.inspect_task(task_id(name))
        except NotFound:
            return None
        except ENGINE_ERRORS as exc:
            raise engine_error(f"inspecting task {name} failed", exc) from exc
        return found

    def list_instances(self, project: str) -> list[LiveInstance]:
        services = self._services(project, "node")
        tasks = self._tasks([s["ID"] for s in services])
        network = network_name(project)
        hosts = self._hosts()
        found: list[LiveInstance] = []
        for service in services:
            own = [t for t in tasks if t.get("ServiceID") == service["ID"]]
            owner = (service["Spec"].get("Labels") or {}).get(labels.OWNER, "")
            found.extend(task_instances(service["Spec"]["Name"], own, network, owner, hosts))
        return found

    def _service_instances(self, project: str, service: str) -> list[LiveInstance]:
        current = self._service(service)
        if current is None:
            return []
        tasks = self._tasks([current["ID"]])
        owner = (current["Spec"].get("Labels") or {}).get(labels.OWNER, "")
        return task_instances(service, tasks, network_name(project), owner, self._hosts())

    def inspect_instance(self, project: str, name: str) -> LiveInstance | None:
        task = self._task(name)
        if task is None or _task_project(task) != project:
            return None
        owner = self._owner_of(str(task.get("ServiceID", "")))
        if owner is None:
            return None  # its service is gone (destroy removed it): the task goes with it
        found = task_instances(
            name.split(".", 1)[0], [task], network_name(project), owner, self._hosts()
        )
        return found[0] if found else None

    def _owner_of(self, service_id: str) -> str | None:
        """The owner label of a service, which its tasks belong to ("" when unlabelled), or
        None when the service no longer exists; read once per service (a service's owner
        changes only when another state directory adopts it)."""
        if service_id not in self.owners:
            current = self._service(service_id) if service_id else None
            if current is None:
                return None
            self.owners[service_id] = (current["Spec"].get("Labels") or {}).get(labels.OWNER, "")
        return self.owners[service_id]

    def probe_instance(self, instance: LiveInstance, health: HealthSettings) -> Probe:
        # The check runs inside the task; Swarm shows it running once it passed, and stops
        # and replaces a task that fails it: from here, the task's state is the answer.
        if instance.state == "running":
            return Probe(True, True, "running: its health check passes in the task")
        if instance.state == "starting":
            return Probe(True, False, "starting: its health check has not passed yet")
        return Probe(False, False, f"task is {instance.state}")

    def discovery(self, project: str, node: str, port: int) -> str | None:
        return f"tasks.{service_name(project, node)}:{port}"

    def balancers(self, project: str, state: StateDir) -> BalancerFleet:
        return self._fleet(project, self._token(project, state))

    def served_table(self, project: str, state: StateDir) -> RoutingTable | None:
        token = read_token(state) or self._token_held(project)
        if token is None:
            return None  # no balancer of the project runs here: it has served nothing
        return self._fleet(project, token).served()

    def _fleet(self, project: str, token: str) -> SwarmBalancers:
        return SwarmBalancers(lambda: self._balancer_endpoints(project), token)

    # -- images ----------------------------------------------------------------------------

    def build_image(self, project: str, root: Path, request: BuildRequest) -> None:
        super().build_image(project, root, request)
        self.images.ship(request.tag)

    def _balancer_image(self, project: str) -> str:
        base = pyimage.choose_base("auto", self._image_available)
        tag = balancer_image.image_tag(base)
        if not self._image_available(tag):
            request = BuildRequest(tag, "balancer", "Dockerfile")
            with tempfile.TemporaryDirectory(prefix="gitops-nodes-balancer-") as folder:
                balancer_image.assemble(base, Path(folder))
                self._build(project, Path(folder), "Dockerfile", request)
        self.images.ship(tag)
        return self.images.reference(tag)

    # -- the project: network, token, balancer ---------------------------------------------

    def prepare_project(self, project: str, state: StateDir) -> None:
        self._refuse_containers(project)
        network = self._ensure_network(project)
        token = self._token(project, state)
        secret = self._ensure_secret(project, token)
        image = self._balancer_image(project)
        spec = balancer_service_spec(project, image, network_name(project), secret, self.settings)
        self._write_service(spec, {network_name(project): network})
        self._remove_stale_secrets(project, secret[1])
        fleet = self._fleet(project, token)
        deadline = time.monotonic() + READY_WITHIN
        # Every node that takes tasks runs a balancer before apply publishes: a node that
        # joined since the last apply (its image just shipped) gets the table too.
        while (missing := self._nodes_without_balancer(project)) or not fleet.ready():
            if time.monotonic() >= deadline:
                where = f" (none runs on {', '.join(missing)})" if missing else ""
                raise RuntimeFailure(
                    f"the balancer service {balancer_name(project)} did not answer within "
                    f"{READY_WITHIN:g}s on admin port {self.settings.admin_port}{where}"
                    + self._service_errors(balancer_name(project))
                )
            time.sleep(POLL * 5)  # waiting for its tasks to start, against a deadline

    def _refuse_containers(self, project: str) -> None:
        """A project is on one runtime: refuse to add Swarm services next to its containers."""
        try:
            found = self.api.containers(all=True, filters=labels.project_filter(project))
        except ENGINE_ERRORS as exc:
            raise engine_error("listing containers failed", exc) from exc
        plain = [c for c in found if labels.INDEX in (c.get("Labels") or {})]
        if plain:
            raise RuntimeFailure(
                f"project {project} has containers of the docker runtime on this engine; "
                "destroy them first (`gitops-nodes destroy --runtime docker`) or use another "
                "--project"
            )

    def _token(self, project: str, state: StateDir) -> str:
        return read_or_make_token(state, lambda: self._token_held(project))

    def _token_held(self, project: str) -> str | None:
        """The token the project's balancer task on this manager holds (its Swarm secret's
        file), or None. A state directory lost (a fresh CI runner) then takes up the token
        the balancers have, rather than giving them a new secret: that would restart every
        balancer task, each host's data port down while its task restarts."""
        service = self._service(balancer_name(project))
        if service is None:
            return None
        for task in self._tasks([service["ID"]]):
            status = task.get("Status") or {}
            container = (status.get("ContainerStatus") or {}).get("ContainerID")
            if task.get("NodeID") != self.node_id or status.get("State") != "running":
                continue
            if not container:
                continue
            try:
                run = self.api.exec_create(container, ["cat", f"/run/secrets/{TOKEN_TARGET}"])
                output: bytes = self.api.exec_start(run["Id"])
                code = self.api.exec_inspect(run["Id"]).get("ExitCode")
            except APIError:
                continue  # the task stopped meanwhile: a new token it is, then
            except ENGINE_ERRORS as exc:
                raise engine_error(f"reading the token of {container[:12]} failed", exc) from exc
            token = output.decode(errors="replace").strip()
            if code == 0 and token:
                return token
        return None

    def _ensure_network(self, project: str) -> str:
        name = network_name(project)
        try:
            for network in self.api.networks(names=[name]):
                if network.get("Name") == name:
                    return str(network["Id"])
            created = self.api.create_network(
                name,
                driver="overlay",
                labels={labels.PROJECT: project, labels.ROLE: "network"},
            )
        except ENGINE_ERRORS as exc:
            raise engine_error(f"creating network {name} failed", exc) from exc
        return str(created["Id"])

    def _ensure_secret(self, project: str, token: str) -> tuple[str, str]:
        name = secret_name(project, token)
        try:
            for secret in self.api.secrets(filters={"name": name}):
                if secret["Spec"]["Name"] == name:
                    return str(secret["ID"]), name
            created = self.api.create_secret(
                name,
                token.encode(),
                labels={labels.PROJECT: project, labels.ROLE: "token"},
            )
        except ENGINE_ERRORS as exc:
            raise engine_error(f"creating secret {name} failed", exc) from exc
        return str(created["ID"]), name

    def _remove_stale_secrets(self, project: str, keep: str) -> None:
        selector = [f"{labels.PROJECT}={project}", f"{labels.ROLE}=token"]
        try:
            for secret in self.api.secrets(filters={"label": selector}):
                if secret["Spec"]["Name"] != keep:
                    self.api.remove_secret(secret["ID"])
        except APIError:
            return  # still in use by a task going away: the next apply removes it
        except ENGINE_ERRORS as exc:
            raise engine_error("removing an old token secret failed", exc) from exc

    def _nodes_without_balancer(self, project: str) -> list[str]:
        """The ready, active nodes where no balancer task of the project runs (yet)."""
        service = self._service(balancer_name(project))
        if service is None:
            return []
        hosts = self._hosts(fresh=True)
        running = {
            str(t.get("NodeID"))
            for t in self._tasks([service["ID"]])
            if t.get("DesiredState") == "running"
            and (t.get("Status") or {}).get("State") == "running"
        }
        return sorted(
            host.hostname
            for node_id, host in hosts.items()
            if host.ready and host.active and node_id not in running
        )

    def _balancer_endpoints(self, project: str) -> list[str]:
        """ "address:admin port" of each running balancer task, by its node's address; a task
        on a node that is down is left out: apply cannot reach it, and must not wait for it
        (when the node is back, the next apply or reconcile gives it the table)."""
        service = self._service(balancer_name(project))
        if service is None:
            return []
        hosts = self._hosts(fresh=True)
        found = []
        for task in self._tasks([service["ID"]]):
            if task.get("DesiredState") != "running":
                continue
            if (task.get("Status") or {}).get("State") != "running":
                continue
            host = hosts.get(str(task.get("NodeID")))
            if host is None or not host.ready or not host.address:
                continue
            found.append(f"{host.address}:{self.settings.admin_port}")
        return sorted(found)

    def remove_project(self, project: str, state: StateDir) -> list[str]:
        removed: list[str] = []
        try:
            for service in self.api.services(filters=labels.project_filter(project)):
                self.api.remove_service(service["ID"])
                removed.append(f"service {service['Spec']['Name']}")
        except NotFound:
            pass
        except ENGINE_ERRORS as exc:
            raise engine_error("removing the project's services failed", exc) from exc
        self._await_no_containers(project)
        try:
            for secret in self.api.secrets(filters=labels.project_filter(project)):
                self.api.remove_secret(secret["ID"])
                removed.append(f"secret {secret['Spec']['Name']}")
        except ENGINE_ERRORS as exc:
            raise engine_error("removing the project's secrets failed", exc) from exc
        removed.extend(self._remove_networks(project))
        (state.path / TOKEN_FILE).unlink(missing_ok=True)
        return removed

    def _await_no_containers(self, project: str) -> None:
        """Wait until this engine's tasks of the project are gone (their images are then
        free to remove)."""
        deadline = time.monotonic() + GONE_WITHIN
        while True:
            try:
                left = self.api.containers(all=True, filters=labels.project_filter(project))
            except ENGINE_ERRORS as exc:
                raise engine_error("listing containers failed", exc) from exc
            swarm_tasks = [c for c in left if "com.docker.swarm.task.id" in (c.get("Labels") or {})]
            if not swarm_tasks:
                return
            if time.monotonic() >= deadline:
                names = ", ".join((c.get("Names") or ["?"])[0].lstrip("/") for c in swarm_tasks)
                raise RuntimeFailure(f"tasks still running {GONE_WITHIN:g}s after removal: {names}")
            time.sleep(POLL * 2)  # Swarm stops them on its own: wait, against a deadline

    def _remove_networks(self, project: str) -> list[str]:
        removed = []
        deadline = time.monotonic() + GONE_WITHIN
        try:
            networks = self.api.networks(filters=labels.project_filter(project))
        except ENGINE_ERRORS as exc:
            raise engine_error("listing networks failed", exc) from exc
        for network in networks:
            while True:
                try:
                    self.api.remove_network(network["Id"])
                    removed.append(f"network {network['Name']}")
                    break
                except NotFound:
                    break
                except APIError as exc:
                    # Swarm detaches a removed service's tasks a little after they stop.
                    if time.monotonic() >= deadline:
                        raise RuntimeFailure(
                            f"removing network {network['Name']} failed: {exc}"
                        ) from exc
                    time.sleep(POLL * 5)
                except ENGINE_ERRORS as exc:
                    raise engine_error(f"removing network {network['Name']} failed", exc) from exc
        return removed

    # -- a node's service --------------------------------------------------------------------

    def prepare_node(
        self, project: str, name: str, node: DesiredNode | None, ownership: Ownership
    ) -> None:
        if node is not None and node.suspended:
            # A service keeps its replicas running: stopping its tasks would only make Swarm
            # start new ones. Scaling services to zero is not built yet.
            raise RuntimeFailure(
                f"node {name}: suspended: true is not supported on the swarm runtime yet; "
                "remove the node from the spec (or from its aliases) instead"
            )
        service = service_name(project, name)
        current = self._service(service)
        if current is not None:
            owner = (current["Spec"].get("Labels") or {}).get(labels.OWNER, "")
            if not (owner == ownership.owner or owner in ownership.adopted):
                raise RuntimeFailure(
                    f"service {service} is owned by another state directory (owner "
                    f"{owner or 'unlabelled'}); --adopt to take it over"
                )
        tasks = self._tasks([current["ID"]]) if current is not None else []
        with self.lock:
            self.baseline[service] = {
                i.name for i in task_instances(service, tasks, network_name(project))
            }
            self.prepared_at[service] = time.time()
        if node is None:
            if current is not None:
                try:
                    self.api.remove_service(current["ID"])
                except NotFound:
                    pass
                except ENGINE_ERRORS as exc:
                    raise engine_error(f"removing service {service} failed", exc) from exc
            return
        image = self.images.reference(node.config.image)
        self.images.ship(node.config.image)
        network = self._ensure_network(project)
        mounts = self._ensure_node_secrets(project, node)
        spec = node_service_spec(
            project,
            node,
            image,
            network_name(project),
            ownership.owner,
            mounts,
            self._image_run(node.config.image) if node.config.secret_env else None,
        )
        self._write_service(spec, {network_name(project): network})
        self.owners.clear()  # the service may carry an owner label now: read it again
        self._remove_stale_node_secrets(project, name, {m.secret_name for m in mounts})

    def _ensure_node_secrets(self, project: str, node: DesiredNode) -> list[SecretMount]:
        """A Docker secret for each of the node's secret values (made once per value)."""
        mounts = []
        for digest, target, data in node_secret_targets(node):
            name = node_secret_name(project, node.name, digest)
            try:
                listed = self.api.secrets(filters={"name": name})
                found = [s for s in listed if s["Spec"]["Name"] == name]
                if found:
                    secret_id = str(found[0]["ID"])
                else:
                    created = self.api.create_secret(
                        name,
                        data,
                        labels={
                            labels.PROJECT: project,
                            labels.ROLE: "node-secret",
                            labels.NODE: node.name,
                        },
                    )
                    secret_id = str(created["ID"])
            except ENGINE_ERRORS as exc:
                # The engine's message names the secret, never its data.
                raise engine_error(f"creating secret {name} failed", exc) from exc
            mounts.append(SecretMount(secret_id, name, target))
        return mounts

    def _remove_stale_node_secrets(self, project: str, node: str, keep: set[str]) -> None:
        selector = [f"{labels.PROJECT}={project}", f"{labels.ROLE}=node-secret"]
        selector.append(f"{labels.NODE}={node}")
        try:
            stale = [
                s
                for s in self.api.secrets(filters={"label": selector})
                if s["Spec"]["Name"] not in keep
            ]
        except ENGINE_ERRORS as exc:
            raise engine_error("listing a node's secrets failed", exc) from exc
        for secret in stale:
            # Tasks of the old spec may still use it while Swarm rolls: the next apply (or
            # destroy) removes it then.
            with contextlib.suppress(APIError):
                self.api.remove_secret(secret["ID"])

    def _image_run(self, image: str) -> tuple[list[str], list[str]]:
        """The image's entrypoint and command, which the env secrets' wrapper runs."""
        try:
            found = self.api.inspect_image(image)
        except ENGINE_ERRORS as exc:
            raise engine_error(f"inspecting image {image} failed", exc) from exc
        config = found.get("Config") or {}
        return list(config.get("Entrypoint") or []), list(config.get("Cmd") or [])

    def _write_service(self, spec: dict[str, Any], network_ids: dict[str, str]) -> None:
        """Create the service, or update it when what we set differs (Swarm then rolls its
        tasks if their spec changed, or only scales it)."""
        name = spec["Name"]
        for _attempt in range(5):
            current = self._service(name)
            arguments = {
                "task_template": spec["TaskTemplate"],
                "name": name,
                "labels": spec["Labels"],
                "mode": spec["Mode"],
                "update_config": spec.get("UpdateConfig"),
                "rollback_config": spec.get("RollbackConfig"),
                "endpoint_spec": spec.get("EndpointSpec"),
            }
            try:
                if current is None:
                    self.api.create_service(**arguments)
                    return
                if projection(current["Spec"], network_ids) == projection(spec, network_ids):
                    return
                version = current["Version"]["Index"]
                self.api.update_service(current["ID"], version, **arguments)
                return
            except APIError as exc:
                if "out of sequence" in str(exc) or exc.status_code == 409:
                    continue  # someone else wrote it meanwhile: read it again
                raise RuntimeFailure(f"writing service {name} failed: {exc}") from exc
            except ENGINE_ERRORS as exc:
                raise engine_error(f"writing service {name} failed", exc) from exc
        raise RuntimeFailure(f"writing service {name} failed: it kept changing under us")

    def create_instance(
        self, project: str, node: DesiredNode, index: int, ownership: Ownership
    ) -> LiveInstance:
        service = service_name(project, node.name)
        within = node.health.start_timeout + NEW_TASK_MARGIN
        deadline = time.monotonic() + within
        while True:
            instances = self._service_instances(project, service)
            with self.lock:
                taken = self.baseline.get(service, set()) | self.claimed
                fresh = [
                    i
                    for i in instances
                    if i.alive and i.spec_hash == node.spec_hash and i.name not in taken and i.host
                ]
                if fresh:
                    self.claimed.add(fresh[0].name)
                    return fresh[0]
            if time.monotonic() >= deadline:
                raise RuntimeFailure(
                    f"Swarm started no new task of {service} for instance {index} within "
                    f"{within:g}s" + self._service_errors(service)
                )
            time.sleep(POLL)  # following Swarm's progress, against a deadline

    def _service_errors(self, service: str) -> str:
        """What Swarm says about the service's tasks that are not running, for messages."""
        current = self._service(service)
        if current is None:
            return f" (service {service} does not exist)"
        notes = []
        for task in self._tasks([current["ID"]]):
            status = task.get("Status") or {}
            error = status.get("Err") or ""
            if status.get("State") != "running" and (error or status.get("Message")):
                notes.append(f"{status.get('State')}: {error or status.get('Message')}")
        update = current.get("UpdateStatus") or {}
        if update.get("Message"):
            notes.append(f"update {update.get('State')}: {update['Message']}")
        return f" ({'; '.join(sorted(set(notes))[:4])})" if notes else ""

    def stop_instance(self, project: str, name: str, grace: float) -> str:
        service = name.split(".", 1)[0]
        deadline = None
        while True:
            task = self._task(name)
            if task is None or _retiring(task):
                with self.lock:
                    self.retired.add(name)
                return name
            current = self._service(service)
            if current is None:
                time.sleep(POLL)  # the service was removed: its tasks go with it
                continue
            if deadline is None:
                deadline = time.monotonic() + _update_budget(current) + grace
            self._check_update(service, current)
            stand_in = self._stand_in(project, current, task)
            if stand_in is not None:
                return stand_in
            if time.monotonic() >= deadline:
                raise RuntimeFailure(
                    f"Swarm did not retire {name} in time" + self._service_errors(service)
                )
            time.sleep(POLL)  # following Swarm's rolling update, against a deadline

    def _check_update(self, service: str, current: dict[str, Any]) -> None:
        """Raise when Swarm gave up the update this apply started (rolled back, paused)."""
        update = current.get("UpdateStatus") or {}
        state = update.get("State", "")
        if state not in ("paused", "rollback_started", "rollback_paused", "rollback_completed"):
            return
        started = parse_timestamp(update.get("StartedAt"))
        with self.lock:
            prepared = self.prepared_at.get(service, 0.0)
        if started is not None and started + 1.0 < prepared:
            return  # an earlier apply's update, not ours
        raise RuntimeFailure(
            f"Swarm stopped the rolling update of {service} ({state}): {update.get('Message', '')}"
        )

    def _stand_in(self, project: str, current: dict[str, Any], task: dict[str, Any]) -> str | None:
        """When Swarm keeps this task (it runs the service's spec, and the service has no
        more tasks than replicas), the task Swarm retired in its place, or the task itself
        when there is none; None while Swarm has not settled."""
        labels_now = current["Spec"].get("Labels") or {}
        task_labels = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
        if task_labels.get(labels.SPEC_HASH) != labels_now.get(labels.SPEC_HASH):
            return None  # an old spec: Swarm's rolling update will reach it
        replicas = _replicas(current)
        tasks = self._tasks([current["ID"]])
        serving = [t for t in tasks if t.get("DesiredState") == "running"]
        if len(serving) > replicas:
            return None  # still scaling down
        service = current["Spec"]["Name"]
        leaving = {
            i.name
            for i in task_instances(service, tasks, network_name(project))
            if i.state == "removing"
        }
        history = {
            f"{service}.{t.get('Slot')}.{t.get('ID')}"
            for t in tasks
            if t.get("DesiredState") != "running"
        }
        with self.lock:
            before = self.baseline.get(service, set())
            for candidate in sorted(before & (leaving | history)):
                if candidate not in self.retired:
                    self.retired.add(candidate)
                    return candidate
        return f"{service}.{task.get('Slot')}.{task.get('ID')}"  # none retired for it: it stays

    def start_instance(self, project: str, name: str) -> LiveInstance:
        raise RuntimeFailure(
            f"{name}: starting a stopped instance again (resume) is not supported on the swarm "
            "runtime yet"
        )

    def remove_instance(self, project: str, name: str) -> None:
        deadline = time.monotonic() + STOPPED_WITHIN
        while True:
            task = self._task(name)
            if task is None or _task_project(task) != project:
                return
            status = (task.get("Status") or {}).get("State", "")
            if status not in _UP:
                return  # stopped
            if task.get("DesiredState") in _UP:
                return  # Swarm keeps it (it retired another in its place): nothing to remove
            if time.monotonic() >= deadline:
                raise RuntimeFailure(
                    f"{name} still runs {STOPPED_WITHIN:g}s after Swarm began retiring it"
                )
            time.sleep(POLL)  # Swarm stops it after Docker's delay: wait, against a deadline


def _task_project(task: dict[str, Any]) -> str | None:
    container = (task.get("Spec") or {}).get("ContainerSpec") or {}
    project = (container.get("Labels") or {}).get(labels.PROJECT)
    return str(project) if project is not None else None


def _retiring(task: dict[str, Any]) -> bool:
    """Whether Swarm is retiring the task or has (its desired state is past running)."""
    return task.get("DesiredState") not in _UP


def _replicas(service: dict[str, Any]) -> int:
    mode = service["Spec"].get("Mode") or {}
    return int((mode.get("Replicated") or {}).get("Replicas", 0))


def _update_budget(service: dict[str, Any]) -> float:
    """How long a rolling update of service may take: per task, its start period (the
    health check's allowance), the update monitor and some slack."""
    spec = service["Spec"]
    replicas = _replicas(service)
    check = (spec["TaskTemplate"].get("ContainerSpec") or {}).get("Healthcheck") or {}
    start = float(check.get("StartPeriod", 0)) / 1e9
    return max(1, replicas) * (start + UPDATE_MONITOR + 15.0)
