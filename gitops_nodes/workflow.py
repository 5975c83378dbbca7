"""The use cases behind the commands: observe, plan, apply, destroy, status. No printing."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from balancer.table import HealthSettings, RoutingTable, TableError, read_table
from gitops_nodes.apply import Applier, ApplyOptions, ApplyReport, StepResult
from gitops_nodes.errors import GitopsNodesError, PlanFileError, StalePlan
from gitops_nodes.health import Probe, instance_status, node_status
from gitops_nodes.live import LOST, UNLABELLED, UNRESPONSIVE, LiveInstance, LiveState
from gitops_nodes.plan import PLAN_FORMAT, Plan, PlanStep, make_plan
from gitops_nodes.runtime.base import Runtime
from gitops_nodes.spec.secrets import DigestKey
from gitops_nodes.spec.settings import load_repository
from gitops_nodes.spec.state import DesiredState
from gitops_nodes.statedir import PROJECT_PATTERN, StateDir, ensure_ownership, read_ownership

LOCK_TIMEOUT = 600.0
# `status` probes every running instance at once (up to STATUS_PROBES at a time), each within
# its check's own timeout but never longer than STATUS_DEADLINE: one slow or silent instance
# costs the command this much once, not its timeout once per instance.
STATUS_DEADLINE = 2.0
STATUS_PROBES = 64
SUSPENDED = "Suspended"  # a node's status (and its stopped instances') while suspended


def project_name(path: Path) -> str:
    """A project name from a folder's name, made a DNS label (as Compose does)."""
    folder = path.resolve()
    name = re.sub(r"[^a-z0-9-]+", "-", folder.name.lower()).strip("-")[:63].strip("-")
    if not name:  # not "default": `destroy /` would destroy whatever project has that name
        raise GitopsNodesError(
            f"the folder {folder} has no letter or digit to name a project after: give "
            "--project (or GITOPS_NODES_PROJECT)"
        )
    return name


def observe(runtime: Runtime, project: str, state: StateDir, adopt: bool = False) -> LiveState:
    """Read what the project has now: containers and images by label, and the published table
    (the one the balancers serve when the state directory has none: it was lost with the
    directory that published it, say on a fresh CI runner, and starting from nothing would
    publish a first table without the aliases that serve now).

    Only the containers the state directory owns are the live state's instances; the
    project's others (another state directory's, or made by hand with our labels copied
    but not our owner id) are set aside as `foreign`, for plans to report and never touch.
    adopt claims them all (--adopt): apply then records their owners as adopted.
    """
    try:
        table = read_table(state.table)
    except TableError as exc:
        raise GitopsNodesError(
            f"the published routing table is unreadable ({exc}); fix or remove {state.table}"
        ) from exc
    if table is None:
        table = runtime.served_table(project, state)
    ownership = read_ownership(state)
    everything = runtime.list_instances(project)
    if adopt:
        ownership = ownership.adopting({i.owner for i in everything if not ownership.owns(i)})
    return LiveState(
        project=project,
        instances=tuple(i for i in everything if ownership.owns(i)),
        images=frozenset(runtime.list_images(project)),
        table=table,
        foreign=tuple(i for i in everything if not ownership.owns(i)),
        ownership=ownership,
    )


def claim(state: StateDir, live: LiveState) -> LiveState:
    """Record the live state's ownership in the state directory (an owner id on the first
    apply, owners adopted with --adopt) and return the live state under it. The claim on
    containers with no owner label (made before owner labels existed) is dropped once none
    is left, so a later copy without our owner id is not taken for ours. Under the lock."""
    ownership = live.ownership
    everything = (*live.instances, *live.foreign)
    if UNLABELLED in ownership.adopted and not any(i.owner == UNLABELLED for i in everything):
        ownership = replace(ownership, adopted=ownership.adopted - {UNLABELLED})
    return replace(live, ownership=ensure_ownership(state, ownership))


def empty_spec(root: Path) -> DesiredState:
    """The spec of nothing: planning against it destroys everything the project owns."""
    return DesiredState(root=root, nodes=MappingProxyType({}), aliases=MappingProxyType({}))


def saved_plan_json(plan: Plan, root: Path, runtime: str = "docker", adopt: bool = False) -> str:
    """A plan as `plan -out` saves it: with the repo it was made from, the runtime, and
    whether it takes over other owners' containers (--adopt)."""
    data = {**plan.to_json(), "root": str(root.resolve()), "runtime": runtime, "adopt": adopt}
    return json.dumps(data, indent=2) + "\n"


class _SavedPlan(BaseModel):
    """What `apply FILE` needs of a saved plan, checked before any of it is used."""

    model_config = ConfigDict(strict=True, extra="allow")

    format: str
    project: str = Field(pattern=PROJECT_PATTERN)  # as --project takes it
    specDigest: str  # the file's own camelCase keys
    liveDigest: str
    changes: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    summary: dict[str, int]
    root: str
    runtime: Literal["docker", "swarm"]
    adopt: bool = False


def read_saved_plan(path: Path) -> dict[str, Any]:
    """A plan written by `plan -out` of this version; PlanFileError, in one line, when it is
    not one (another file, another version, or a plan cut short or edited)."""
    not_a_plan = f"{path} is not a plan saved by `gitops-nodes plan -out`"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanFileError(f"cannot read the saved plan {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PlanFileError(f"{not_a_plan} (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        where = "; apply takes a repository folder or such a plan"
        raise PlanFileError(f"{not_a_plan} (not JSON: {exc}){where}") from None
    except RecursionError:
        raise PlanFileError(f"{not_a_plan} (its JSON is nested too deeply)") from None
    again = f"make a new one with `gitops-nodes plan -out {path}`"
    if not isinstance(data, dict) or "format" not in data:
        raise PlanFileError(not_a_plan)
    if data["format"] != PLAN_FORMAT:
        raise PlanFileError(
            f"{path} is a plan of format {str(data['format'])[:60]!r}, this gitops-nodes reads "
            f"{PLAN_FORMAT}; {again}"
        )
    try:
        _SavedPlan.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        what = "missing" if error["type"] == "missing" else "not what plan -out writes"
        raise PlanFileError(
            f"{path} is not a complete plan of this gitops-nodes version: {where} is {what}; "
            f"{again}"
        ) from None
    if not Path(data["root"]).is_absolute():
        raise PlanFileError(
            f"{path} is not a complete plan of this gitops-nodes version: root is not an "
            f"absolute path; {again}"
        )
    return dict(data)


def check_saved_plan(saved: dict[str, Any], plan: Plan) -> None:
    """Refuse a saved plan when the spec or the live state moved since it was made."""
    moved = []
    if saved["specDigest"] != plan.spec_digest:
        moved.append("the spec changed")
    if saved["liveDigest"] != plan.live_digest:
        moved.append("the live state changed")
    if saved.get("project") != plan.project:
        moved.append(f"it is for project {saved.get('project')!r}, not {plan.project!r}")
    if moved:
        raise StalePlan(
            "the saved plan is stale: "
            + " and ".join(moved)
            + " since it was made; run `gitops-nodes plan` again"
        )


@dataclass(frozen=True)
class ApplyRun:
    """A plan and, when it had changes, the report of carrying it out."""

    plan: Plan
    report: ApplyReport | None
    # The running instances it planned as unresponsive (replaced, when the report is ok).
    unresponsive: frozenset[str] = frozenset()


def apply(
    desired: DesiredState,
    runtime: Runtime,
    project: str,
    state: StateDir,
    options: ApplyOptions | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    on_result: Callable[[StepResult], None] | None = None,
    saved: dict[str, Any] | None = None,
    on_publish: Callable[[RoutingTable], None] | None = None,
    on_start: Callable[[PlanStep], None] | None = None,
    check: Callable[[Plan, LiveState], None] | None = None,
    adopt: bool = False,
    unresponsive: Collection[str] = (),
) -> ApplyRun:
    """Plan and apply under the project's lock, so concurrent applies take turns; check
    (gitops_nodes/guards.py) may refuse the plan, raising, before anything changes.
    unresponsive names running instances to plan as not alive (watch: see UNRESPONSIVE)."""
    with state.lock(LOCK_TIMEOUT):
        if desired.nodes or desired.aliases:  # destroying needs nothing made first
            runtime.prepare_project(project, state)
        live = claim(state, observe(runtime, project, state, adopt))
        marked: frozenset[str] = frozenset()
        if unresponsive:
            live = live.with_unresponsive(unresponsive)
            marked = frozenset(i.name for i in live.instances if i.state == UNRESPONSIVE)
        runtime.balancers(project, state).sync(live.table)
        plan = make_plan(project, desired, live)
        if saved is not None:
            check_saved_plan(saved, plan)
        if check is not None:
            check(plan, live)
        if on_plan is not None:
            on_plan(plan)
        if plan.empty:
            return ApplyRun(plan, None, marked)
        report = Applier(
            plan, desired, live, runtime, state, options, on_result, on_publish, on_start
        ).run()
        return ApplyRun(plan, report, marked)


def load_for_apply(
    target: Path,
    secret_key_for: Callable[[Path, dict[str, Any] | None], DigestKey] | None = None,
) -> tuple[DesiredState, dict[str, Any] | None]:
    """The spec to apply: a repository folder, or the folder a saved plan was made from;
    secret_key_for(root, saved plan) gives the key of its secrets' digests (its state
    directory's, which a saved plan's project decides)."""
    saved = read_saved_plan(target) if target.is_file() else None
    root = Path(saved["root"]) if saved is not None else target
    key = secret_key_for(root, saved) if secret_key_for is not None else None
    return load_repository(root, secret_key=key)[0], saved


@dataclass(frozen=True)
class InstanceView:
    index: int
    name: str
    status: str
    port: int | None
    detail: str
    host: str = "127.0.0.1"
    hostname: str = ""  # the machine it runs on ("" when not known)

    @property
    def address(self) -> str | None:
        """Where balancers reach it, once it has a port."""
        return f"{self.host}:{self.port}" if self.port else None


@dataclass(frozen=True)
class NodeView:
    name: str
    status: str
    min_healthy: int
    instances: tuple[InstanceView, ...]


@dataclass(frozen=True)
class StatusView:
    project: str
    nodes: tuple[NodeView, ...]
    aliases: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]
    table_generation: int | None
    left_alone: tuple[str, ...] = ()  # the project's containers another state directory owns

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "tableGeneration": self.table_generation,
            "nodes": [
                {
                    "name": n.name,
                    "status": n.status,
                    "minHealthy": n.min_healthy,
                    "instances": [
                        {
                            "index": i.index,
                            "name": i.name,
                            "status": i.status,
                            "address": i.address,
                            "hostname": i.hostname or None,
                            "detail": i.detail,
                        }
                        for i in n.instances
                    ],
                }
                for n in self.nodes
            ],
            "aliases": [
                {"name": name, "nodes": [{"node": n, "weight": w} for n, w in routes]}
                for name, routes in self.aliases
            ],
            "leftAlone": list(self.left_alone),
        }


def _probe_all(
    runtime: Runtime, instances: list[LiveInstance], health: Callable[[str], HealthSettings]
) -> dict[str, Probe]:
    """One probe of each instance, all at once, within STATUS_DEADLINE; an instance whose
    probe has not answered by then is reported as such."""
    if not instances:
        return {}
    pool = ThreadPoolExecutor(max_workers=min(STATUS_PROBES, len(instances)))
    try:
        futures: dict[str, Future[Probe]] = {
            i.name: pool.submit(
                runtime.probe_instance,
                i,
                replace(check, timeout=min(check.timeout, STATUS_DEADLINE)),
            )
            for i in instances
            for check in (health(i.node),)
        }
        wait(futures.values(), timeout=STATUS_DEADLINE + 0.5)
        late = Probe(False, False, f"no answer to its check within {STATUS_DEADLINE:g}s")
        return {
            name: future.result() if future.done() else late for name, future in futures.items()
        }
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _state_detail(instance: LiveInstance) -> str:
    """Why an instance that was not probed has its status, in words."""
    if instance.state == LOST:
        host = instance.hostname or "its host"
        return f"{host} is down: Swarm starts a replacement elsewhere, stops this one when back"
    return f"container is {instance.state}"


def status(
    runtime: Runtime, project: str, state: StateDir, desired: DesiredState | None
) -> StatusView:
    """Every node and instance with its status, probing each running instance once."""
    live = observe(runtime, project, state)
    table = live.table
    names = sorted(live.node_names() | set(desired.nodes if desired else ()))

    def health_for(node: str) -> tuple[int, HealthSettings]:
        if table and node in table.nodes:
            return table.nodes[node].min_healthy, table.nodes[node].health
        if desired and node in desired.nodes:
            want = desired.nodes[node]
            return want.min_healthy, want.health
        return 1, HealthSettings()

    # One engine's name for the instances that do not name their own host (one Docker host).
    engine = runtime.host_name() if any(not i.hostname for i in live.instances) else ""
    running = [i for i in live.instances if i.state == "running" and i.port]
    probes = _probe_all(runtime, running, lambda node: health_for(node)[1])
    now = time.time()
    nodes = []
    for name in names:
        min_healthy, health = health_for(name)
        # What apply last published decides: the spec may say so before it is applied.
        suspended = bool(table and name in table.nodes and table.nodes[name].suspended)
        views = []
        for instance in live.by_node.get(name, ()):
            found = probes.get(instance.name)
            if suspended and not instance.alive:
                views.append(
                    InstanceView(
                        instance.index,
                        instance.name,
                        SUSPENDED,
                        None,
                        f"container is {instance.state}: its node is suspended",
                    )
                )
                continue
            views.append(
                InstanceView(
                    instance.index,
                    instance.name,
                    instance_status(instance, found, now, health),
                    instance.port,
                    found.detail if found else _state_detail(instance),
                    instance.host,
                    instance.hostname or engine,
                )
            )
        if desired and name in desired.nodes:
            present = {v.index for v in views}
            missing = "not created yet" + (": its node is suspended" if suspended else "")
            views.extend(
                InstanceView(index, "", "Undefined", None, missing)
                for index in range(desired.nodes[name].instances)
                if index not in present
            )
        statuses = [v.status for v in views if v.status != "Undefined"]
        views.sort(key=lambda v: (v.index, v.name))
        status = SUSPENDED if suspended else node_status(statuses, min_healthy)
        nodes.append(NodeView(name, status, min_healthy, tuple(views)))
    aliases = tuple(
        (name, entry.targets) for name, entry in sorted((table.aliases if table else {}).items())
    )
    return StatusView(
        project,
        tuple(nodes),
        aliases,
        table.generation if table else None,
        tuple(i.name for i in live.foreign),
    )
