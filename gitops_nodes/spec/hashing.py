"""The one spec hash: what an instance's container is made from, as a short stable digest.

An instance is recreated exactly when this hash changes, so plan, apply and status must all
get it from here (Compose's history of needless recreates is what happens otherwise). Bump
SCHEME only when the projection must change, and know that it recreates every instance.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

SCHEME = 1

# The log budget of an instance whose node sets no `logs`: 3 files of 10 MiB (the spec's
# documented default, spec/models.py). Applied when a container is created, never hashed.
DEFAULT_LOG_BUDGET = (10 * 2**20, 3)


@dataclass(frozen=True)
class InstanceConfig:
    """Everything a node's containers are created from; a change means new containers."""

    image: str
    port: int
    command: tuple[str, ...] | None
    env: tuple[tuple[str, str], ...]
    cpus: float | None
    memory: int | None
    # A second container port published for the instance's metrics (spec.telemetry.port,
    # when it differs from port): publishing a port needs a new container, so it is hashed.
    telemetry_port: int | None = None
    # The node's `logs` (max size in bytes, max files), fixed at a container's creation.
    # None when the spec does not set it: DEFAULT_LOG_BUDGET applies, and the hash is the
    # one it had before `logs` existed, so upgrading gitops-nodes recreates nothing.
    logs: tuple[int, int] | None = None
    # Secrets as (env name or file path in the container, keyed digest of the value): the
    # digest (spec/secrets.py, HMAC with the state directory's key) is what is hashed and
    # labelled, so a rotation rolls the instances while no label holds or betrays a value.
    secret_env: tuple[tuple[str, str], ...] = ()
    secret_files: tuple[tuple[str, str], ...] = ()
    # The node's `resources.gpus`: a count, "all", or device ids; None (absent from the
    # hash, as for logs) when the node asks for none.
    gpus: int | str | tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["command"] = list(self.command) if self.command is not None else None
        data["env"] = dict(self.env)
        if self.telemetry_port is None:
            # Absent rather than null: nodes without it keep the hash they had before it existed.
            del data["telemetry_port"]
        if self.logs is None:
            del data["logs"]  # absent, as for telemetry_port
        else:
            data["logs"] = {"max_size": self.logs[0], "max_files": self.logs[1]}
        for name in ("secret_env", "secret_files"):
            if data[name]:
                data[name] = dict(data[name])
            else:
                del data[name]  # absent, as for telemetry_port
        if self.gpus is None:
            del data["gpus"]
        elif isinstance(self.gpus, tuple):
            data["gpus"] = list(self.gpus)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceConfig:
        command = data.get("command")
        logs = data.get("logs")
        gpus = data.get("gpus")
        return cls(
            image=str(data["image"]),
            port=int(data["port"]),
            command=tuple(command) if command is not None else None,
            env=tuple(sorted(dict(data.get("env") or {}).items())),
            cpus=data.get("cpus"),
            memory=data.get("memory"),
            telemetry_port=data.get("telemetry_port"),
            logs=(int(logs["max_size"]), int(logs["max_files"])) if logs is not None else None,
            secret_env=tuple(sorted(dict(data.get("secret_env") or {}).items())),
            secret_files=tuple(sorted(dict(data.get("secret_files") or {}).items())),
            gpus=tuple(gpus) if isinstance(gpus, list) else gpus,
        )


def show_gpus(gpus: int | str | tuple[str, ...]) -> str:
    """resources.gpus as the spec writes it: 1, all, ["0", "1"]."""
    if isinstance(gpus, tuple):
        return "[" + ", ".join(f'"{device}"' for device in gpus) + "]"
    return str(gpus)


def log_budget(config: InstanceConfig) -> tuple[int, int]:
    """(max size in bytes, max files) of an instance's log: its node's, else the default."""
    return config.logs if config.logs is not None else DEFAULT_LOG_BUDGET


def canonical_json(data: Any) -> str:
    """Sorted, compact JSON: equal values always give equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_hash(config: InstanceConfig) -> str:
    """The hex sha256 of the config's canonical JSON, with the scheme version inside."""
    payload = canonical_json({"scheme": SCHEME, **config.as_dict()})
    return hashlib.sha256(payload.encode()).hexdigest()
