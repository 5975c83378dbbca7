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

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["command"] = list(self.command) if self.command is not None else None
        data["env"] = dict(self.env)
        if self.telemetry_port is None:
            # Absent rather than null: nodes without it keep the hash they had before it existed.
            del data["telemetry_port"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceConfig:
        command = data.get("command")
        return cls(
            image=str(data["image"]),
            port=int(data["port"]),
            command=tuple(command) if command is not None else None,
            env=tuple(sorted(dict(data.get("env") or {}).items())),
            cpus=data.get("cpus"),
            memory=data.get("memory"),
            telemetry_port=data.get("telemetry_port"),
        )


def canonical_json(data: Any) -> str:
    """Sorted, compact JSON: equal values always give equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_hash(config: InstanceConfig) -> str:
    """The hex sha256 of the config's canonical JSON, with the scheme version inside."""
    payload = canonical_json({"scheme": SCHEME, **config.as_dict()})
    return hashlib.sha256(payload.encode()).hexdigest()
