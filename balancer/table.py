"""The routing table: an immutable value, and its file, replaced atomically by rename.

This module owns the table's format. gitops-nodes writes it after apply; the balancer reads
it and swaps its reference in one assignment, so a request sees one table from start to end.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

FORMAT = "gitops-nodes/routing-table/v1"


class TableError(Exception):
    """A routing table file that is missing, partial or malformed; the current table stays."""


@dataclass(frozen=True)
class HealthSettings:
    """How an instance's health is checked: an HTTP path, or a TCP connect when path is None."""

    path: str | None = None
    port: int | None = None
    interval: float = 2.0
    timeout: float = 1.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 3
    start_timeout: float = 60.0


@dataclass(frozen=True)
class Endpoint:
    """One instance as the balancer reaches it; `instance` is its stable identity."""

    instance: str
    host: str
    port: int


@dataclass(frozen=True)
class NodeEntry:
    """A node's instances in rotation and the settings that judge them.

    With `discover` ("host:port"), the balancer also finds instances itself: every address
    the host name resolves to, on that port (Swarm's `tasks.<service>`, which answers with a
    task's address once its health check passed and stops before the task is stopped).
    """

    endpoints: tuple[Endpoint, ...]
    min_healthy: int
    health: HealthSettings
    discover: str | None = None


@dataclass(frozen=True)
class AliasEntry:
    """An alias's nodes with their weights, in the order the spec lists them."""

    targets: tuple[tuple[str, int], ...]
    affinity_header: str | None = None  # requests with equal values stick to one instance


@dataclass(frozen=True)
class RoutingTable:
    """Which instances serve each node and how each alias splits across nodes."""

    generation: int = 0
    nodes: Mapping[str, NodeEntry] = field(default_factory=lambda: MappingProxyType({}))
    aliases: Mapping[str, AliasEntry] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "generation": self.generation,
            "nodes": {
                name: {
                    "endpoints": [
                        {"instance": e.instance, "host": e.host, "port": e.port}
                        for e in entry.endpoints
                    ],
                    "minHealthy": entry.min_healthy,
                    "health": health_to_json(entry.health),
                    # only when set, so tables without it read as they always did
                    **({"discover": entry.discover} if entry.discover else {}),
                }
                for name, entry in sorted(self.nodes.items())
            },
            "aliases": {
                name: {
                    "targets": [{"node": n, "weight": w} for n, w in entry.targets],
                    "affinityHeader": entry.affinity_header,
                }
                for name, entry in sorted(self.aliases.items())
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> RoutingTable:
        """Parse a table, raising TableError with what is wrong rather than a KeyError."""
        try:
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise TableError(f"not a routing table: expected format {FORMAT!r}")
            nodes = {
                str(name): NodeEntry(
                    endpoints=tuple(
                        Endpoint(str(e["instance"]), str(e["host"]), int(e["port"]))
                        for e in entry["endpoints"]
                    ),
                    min_healthy=int(entry["minHealthy"]),
                    health=HealthSettings(**_health_fields(entry["health"])),
                    discover=_discover(entry.get("discover")),
                )
                for name, entry in data["nodes"].items()
            }
            aliases = {
                str(name): AliasEntry(
                    tuple((str(t["node"]), int(t["weight"])) for t in entry["targets"]),
                    _optional_lower(entry.get("affinityHeader")),
                )
                for name, entry in data["aliases"].items()
            }
            return cls(
                generation=int(data["generation"]),
                nodes=MappingProxyType(nodes),
                aliases=MappingProxyType(aliases),
            )
        except TableError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TableError(f"malformed routing table: {type(exc).__name__}: {exc}") from exc


def _discover(value: Any) -> str | None:
    """A discover entry: "host:port" with a port number, or absent."""
    if value is None:
        return None
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TableError(f"malformed routing table: discover {value!r} is not host:port")
    return str(value)


def split_discover(value: str) -> tuple[str, int]:
    """(host, port) of a discover entry that from_json accepted."""
    host, _, port = value.rpartition(":")
    return host, int(port)


def _optional_lower(value: Any) -> str | None:
    return str(value).lower() if value else None


_HEALTH_KEYS = {
    "path": "path",
    "port": "port",
    "interval": "interval",
    "timeout": "timeout",
    "healthyThreshold": "healthy_threshold",
    "unhealthyThreshold": "unhealthy_threshold",
    "startTimeout": "start_timeout",
}


def health_to_json(health: HealthSettings) -> dict[str, Any]:
    """Health settings keyed as the spec writes them (camelCase)."""
    return {key: getattr(health, attr) for key, attr in _HEALTH_KEYS.items()}


def _health_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    return {attr: data[key] for key, attr in _HEALTH_KEYS.items() if key in data}


def write_table(path: Path, table: RoutingTable) -> None:
    """Replace the file at path with table, atomically: readers see the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table.to_json(), indent=2, sort_keys=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_table(path: Path) -> RoutingTable | None:
    """The table in path, None when there is no file yet; TableError when it is malformed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TableError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise TableError(f"{path} is not UTF-8 text: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TableError(f"{path} is not valid JSON: {exc}") from exc
    return RoutingTable.from_json(data)
