"""The repository's own settings: `gitops-nodes.yaml` at its root, about how it is deployed.

The nodes and aliases say what runs; this file says where: one Docker host, or a Swarm
cluster. It is optional (everything has a default) and validated like the spec, every
problem reported with its file, line, column and field:

    runtime: swarm            # docker (the default) or swarm
    swarm:
      port: 8080              # the balancer's published data port, on every node
      adminPort: 8081         # its control plane (status; table pushes need its token)
      registry: registry.example.com:5000/ml   # optional: push built images, nodes pull
      engines:                # optional: without a registry, how to reach each other
        worker-1: ssh://root@10.0.0.12         # node's engine to load images into it
    allowEmpty: false         # watch: apply a revision with no Node or Alias (destroys all)
    destroyBudget: 50         # watch: most live nodes (percent) one revision may destroy
    notifications: [...]      # watch: webhooks told of its events (spec/notifications.py)

The spec loader skips this file (it is no Node or Alias document), whatever it holds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, ValidationError, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from gitops_nodes.spec.errors import SpecErrors, SpecProblem
from gitops_nodes.spec.load import describe_error, load_spec, locate_problems
from gitops_nodes.spec.models import SETTINGS_FILE, Port, SpecModel, repeated
from gitops_nodes.spec.notifications import NotificationTarget, ResolvedTarget, resolve_targets
from gitops_nodes.spec.repofiles import ReadError, read_file
from gitops_nodes.spec.secrets import DigestKey
from gitops_nodes.spec.state import DesiredState
from gitops_nodes.spec.yaml12 import YamlError, parse_documents

__all__ = [
    "RUNTIMES",
    "SETTINGS_FILE",
    "Settings",
    "SwarmSettings",
    "load_notifications",
    "load_repository",
    "load_settings",
]

RUNTIMES = ("docker", "swarm")

# host[:port]/path, as `docker push` takes a repository prefix (no scheme, no tag): the
# host's labels and the path's components as Docker's reference grammar has them.
_HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = re.compile(
    rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*(?::(?P<port>[0-9]{{1,5}}))?(?:/{_PATH_PART})*$"
)
_ENGINE = re.compile(r"^(ssh|tcp|unix)://\S+$")
MAX_REGISTRY = 255  # characters: Docker's limit for a whole repository name


def _registry(value: Any) -> str:
    if isinstance(value, str) and len(value) <= MAX_REGISTRY:
        found = _REGISTRY.match(value)
        if found is not None and (found["port"] is None or 0 < int(found["port"]) <= 65535):
            return value
    raise PydanticCustomError(
        "registry",
        "expected host[:port]/path as docker push takes it (registry.example.com:5000/ml: "
        "lowercase, no scheme, a port from 1 to 65535, at most 255 characters)",
    )


Registry = Annotated[str, PlainValidator(_registry), WithJsonSchema({"type": "string"})]
EngineUrl = Annotated[str, Field(pattern=_ENGINE.pattern)]
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


def _node_hostname(value: Any) -> str:
    if isinstance(value, str) and _HOSTNAME.match(value):
        return value
    raise PydanticCustomError(
        "node_hostname",
        "expected a Swarm node's hostname, as `docker node ls` shows it (letters, digits, "
        "'.', '-', '_')",
    )


NodeHostname = Annotated[str, PlainValidator(_node_hostname), WithJsonSchema({"type": "string"})]


class SwarmSettings(SpecModel):
    """How the project runs on a Swarm cluster."""

    port: Port = 8080
    admin_port: Port = 8081
    registry: Registry | None = None
    engines: dict[NodeHostname, EngineUrl] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_ports(self) -> SwarmSettings:
        if self.port == self.admin_port:
            raise PydanticCustomError(
                "admin_port", "expected a port other than the data port {port}", {"port": self.port}
            )
        return self


class Settings(SpecModel):
    """Everything gitops-nodes.yaml may say; an absent file means all the defaults."""

    runtime: Literal["docker", "swarm"] = "docker"
    swarm: SwarmSettings = Field(default_factory=SwarmSettings)
    # Safety for `watch`, which applies every push unattended (gitops_nodes/guards.py).
    allow_empty: bool = False
    destroy_budget: int = Field(default=50, ge=0, le=100)
    notifications: list[NotificationTarget] = Field(
        default_factory=list,
        description="watch: where it sends its events (a revision applied, a reconcile failed, "
        "recovered, drift healed, a rollout step, a rollback), on transitions only.",
    )

    @model_validator(mode="after")
    def _distinct_notification_names(self) -> Settings:
        # A target's name keys its queue and names it in logs: two of one name would share it.
        twice = repeated(target.name for target in self.notifications)
        if twice:
            raise PydanticCustomError(
                "notification_names",
                "expected each notification target's name once, got {names} more than once",
                {"names": ", ".join(twice)},
            )
        return self


def load_settings(root: Path) -> Settings:
    """The settings of the repository at root; raises SpecErrors with positions when the file
    is not valid."""
    if not os.path.lexists(root / SETTINGS_FILE):
        return Settings()
    try:
        data = read_file(root.resolve(), SETTINGS_FILE)
    except ReadError as exc:
        raise SpecErrors([exc.as_problem()]) from None
    return parse_settings(data)


def load_notifications(root: Path, settings: Settings) -> tuple[ResolvedTarget, ...]:
    """settings' notification targets with their secrets read (from the environment and
    files, where watch runs); raises SpecErrors at the field of a secret that cannot be read."""
    if not settings.notifications:
        return ()
    targets, problems = resolve_targets(settings.notifications, os.environ)
    if problems:
        try:
            data = read_file(root.resolve(), SETTINGS_FILE)
        except ReadError as exc:  # changed under us since it was parsed
            raise SpecErrors([exc.as_problem()]) from None
        failures = [(0, loc, message, False) for loc, message in problems]
        raise SpecErrors(locate_problems(SETTINGS_FILE, data, failures))
    return targets


def load_repository(
    root: Path, read_keys: bool = True, secret_key: DigestKey | None = None
) -> tuple[DesiredState, Settings]:
    """The spec and the settings of the repository at root; raises one SpecErrors with the
    problems of both, so a run reports every problem at once."""
    problems: list[SpecProblem] = []
    desired: DesiredState | None = None
    settings = Settings()
    try:
        desired = load_spec(root, read_keys, secret_key)
    except SpecErrors as exc:
        problems.extend(exc.problems)
    if root.is_dir():  # without a repository folder the spec's error says so
        try:
            settings = load_settings(root)
        except SpecErrors as exc:
            problems.extend(exc.problems)
    if problems or desired is None:
        raise SpecErrors(problems)
    return desired, settings


def parse_settings(data: bytes) -> Settings:
    """Settings from the bytes of a settings file."""
    try:
        documents = parse_documents(data)
    except YamlError as exc:
        problem = SpecProblem(SETTINGS_FILE, exc.line, exc.column, "", exc.problem)
        raise SpecErrors([problem]) from None
    if len(documents) > 1:
        raise SpecErrors(
            [SpecProblem(SETTINGS_FILE, 1, 1, "", "expected one document, found several")]
        )
    raw: Any = documents[0] if documents else None
    if raw is None:
        return Settings()
    if not isinstance(raw, dict):
        raise SpecErrors(
            [SpecProblem(SETTINGS_FILE, 1, 1, "", "expected a mapping such as `runtime: swarm`")]
        )
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        failures = [(0, *describe_error(error, Settings)) for error in exc.errors()]
        raise SpecErrors(locate_problems(SETTINGS_FILE, data, failures)) from None
