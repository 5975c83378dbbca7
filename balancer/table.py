"""The routing table: an immutable value, and its file, replaced atomically by rename.

This module owns the table's format. gitops-nodes writes it after apply; the balancer reads
it and swaps its reference in one assignment, so a request sees one table from start to end.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

FORMAT = "gitops-nodes/routing-table/v1"
# A table with access rules is written as v2, so that a balancer too old to know access rules
# refuses it (and keeps its current table) rather than serve private targets to anyone.
FORMAT_WITH_ACCESS = "gitops-nodes/routing-table/v2"
FORMATS = (FORMAT, FORMAT_WITH_ACCESS)


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
    # Where the instance serves its metrics when that is not `port` (a second published port).
    telemetry_port: int | None = None
    # A Unix socket the instance also serves requests on, on this host (a python node on the
    # docker runtime): requests go there, skipping TCP; health checks still use host:port.
    socket: str | None = None


@dataclass(frozen=True)
class AccessKey:
    """A caller allowed on a private node or alias: its name and the SHA-256 of its key (hex).

    The key itself is never in the table: apply resolves it from the environment or a file and
    writes its digest; the balancer hashes what a request presents and compares digests.
    """

    name: str
    sha256: str


@dataclass(frozen=True)
class AccessRule:
    """Who may call a private node or alias: its keys and, optionally, the folder ids allowed
    in `x-folder-id` (empty: any folder, or none)."""

    keys: tuple[AccessKey, ...]
    folders: tuple[str, ...] = ()


@dataclass(frozen=True)
class Timeouts:
    """How long the balancer waits on a node's instances, in seconds (the spec's `endpoint`)."""

    request: float = 15.0  # one whole exchange: from the request sent to the response's end
    idle: float = 15.0  # a kept-alive connection to an instance with no request on it


DEFAULT_TIMEOUTS = Timeouts()


@dataclass(frozen=True)
class NodeEntry:
    """A node's instances in rotation and the settings that judge them.

    A suspended node keeps its entry with no endpoints: its aliases route around it, and a
    request for it alone is answered 503.
    With `discover` ("host:port"), the balancer also finds instances itself: every address
    the host name resolves to, on that port (Swarm's `tasks.<service>`, which answers with a
    task's address once its health check passed and stops before the task is stopped).
    """

    endpoints: tuple[Endpoint, ...]
    min_healthy: int
    health: HealthSettings
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    suspended: bool = False
    access: AccessRule | None = None  # None: public
    telemetry_path: str | None = None  # the instances' Prometheus text; None: not scraped
    discover: str | None = None
    # Location and cookie paths of answers to /nodes/<name>/... put under that prefix.
    prefix_rewrite: bool = False


@dataclass(frozen=True)
class AliasEntry:
    """An alias's nodes with their weights, in the order the spec lists them."""

    targets: tuple[tuple[str, int], ...]
    affinity_header: str | None = None  # requests with equal values stick to one instance
    access: AccessRule | None = None  # None: public
    # Location and cookie paths of answers to /aliases/<name>/... put under that prefix.
    prefix_rewrite: bool = False


@dataclass(frozen=True)
class RoutingTable:
    """Which instances serve each node and how each alias splits across nodes."""

    generation: int = 0
    nodes: Mapping[str, NodeEntry] = field(default_factory=lambda: MappingProxyType({}))
    aliases: Mapping[str, AliasEntry] = field(default_factory=lambda: MappingProxyType({}))

    def has_access_rules(self) -> bool:
        """Whether any node or alias is private."""
        entries: list[NodeEntry | AliasEntry] = [*self.nodes.values(), *self.aliases.values()]
        return any(entry.access is not None for entry in entries)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_WITH_ACCESS if self.has_access_rules() else FORMAT,
            "generation": self.generation,
            "nodes": {name: node_to_json(entry) for name, entry in sorted(self.nodes.items())},
            "aliases": {name: alias_to_json(alias) for name, alias in sorted(self.aliases.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> RoutingTable:
        """Parse a table, raising TableError with what is wrong rather than a KeyError."""
        try:
            if not isinstance(data, dict) or data.get("format") not in FORMATS:
                expected = " or ".join(repr(f) for f in FORMATS)
                raise TableError(f"not a routing table: expected format {expected}")
            nodes = {
                str(name): NodeEntry(
                    endpoints=tuple(
                        Endpoint(
                            str(e["instance"]),
                            str(e["host"]),
                            int(e["port"]),
                            _optional_port(e.get("telemetryPort")),
                            _optional_socket(e.get("socket")),
                        )
                        for e in entry["endpoints"]
                    ),
                    min_healthy=int(entry["minHealthy"]),
                    health=HealthSettings(**_health_fields(entry["health"])),
                    timeouts=_timeouts(entry.get("timeouts")),
                    suspended=bool(entry.get("suspended", False)),
                    access=access_from_json(entry.get("access")),
                    telemetry_path=_optional_path(entry.get("telemetryPath")),
                    discover=_discover(entry.get("discover")),
                    prefix_rewrite=_flag(entry.get("prefixRewrite")),
                )
                for name, entry in data["nodes"].items()
            }
            aliases = {
                str(name): AliasEntry(
                    tuple((str(t["node"]), int(t["weight"])) for t in entry["targets"]),
                    _optional_lower(entry.get("affinityHeader")),
                    access_from_json(entry.get("access")),
                    _flag(entry.get("prefixRewrite")),
                )
                for name, entry in data["aliases"].items()
            }
            generation = data["generation"]
            if type(generation) is not int or generation < 0:  # not 1.5 read as 1, nor true
                raise TableError(f"malformed routing table: generation {generation!r}")
            for name, entry in nodes.items():
                _check_node(name, entry)
            return cls(
                generation=generation,
                nodes=MappingProxyType(nodes),
                aliases=MappingProxyType(aliases),
            )
        except TableError:
            raise
        # RecursionError: JSON nested deeper than the parser's stack; OverflowError: an
        # infinity (1e400) where a whole number belongs.
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            OverflowError,
            RecursionError,
        ) as exc:
            raise TableError(f"malformed routing table: {type(exc).__name__}: {exc}") from exc


def node_to_json(entry: NodeEntry) -> dict[str, Any]:
    """A node's entry as the table's file holds it."""
    data: dict[str, Any] = {
        "endpoints": [_endpoint_to_json(e) for e in entry.endpoints],
        "minHealthy": entry.min_healthy,
        "health": health_to_json(entry.health),
        "timeouts": {"request": entry.timeouts.request, "idle": entry.timeouts.idle},
        "suspended": entry.suspended,
        "telemetryPath": entry.telemetry_path,
    }
    if entry.discover:  # only when set, so tables without it read as they always did
        data["discover"] = entry.discover
    if entry.access is not None:
        data["access"] = access_to_json(entry.access)
    if entry.prefix_rewrite:  # only when set, as discover
        data["prefixRewrite"] = True
    return data


def alias_to_json(alias: AliasEntry) -> dict[str, Any]:
    """An alias's entry as the table's file holds it."""
    data: dict[str, Any] = {
        "targets": [{"node": n, "weight": w} for n, w in alias.targets],
        "affinityHeader": alias.affinity_header,
    }
    if alias.access is not None:
        data["access"] = access_to_json(alias.access)
    if alias.prefix_rewrite:
        data["prefixRewrite"] = True
    return data


def access_to_json(access: AccessRule) -> dict[str, Any]:
    return {
        "keys": [{"name": k.name, "sha256": k.sha256} for k in access.keys],
        "folders": list(access.folders),
    }


def access_from_json(data: Any) -> AccessRule | None:
    """An entry's access rule; a malformed one raises, so the table is refused as a whole
    (a private target must never be served as public because its rule did not parse)."""
    if data is None:
        return None
    keys = tuple(AccessKey(_caller(k["name"]), _sha256_hex(k["sha256"])) for k in data["keys"])
    if not keys:
        raise ValueError("an access rule without keys")
    return AccessRule(keys, tuple(str(f) for f in data.get("folders", ())))


def _caller(value: Any) -> str:
    # The name goes into a header to the instance: nothing that could end a header line.
    text = str(value)
    if not text or not all("!" <= c <= "~" for c in text):
        raise ValueError(f"an access key's name is not printable ASCII: {text!r}")
    return text


def _sha256_hex(value: Any) -> str:
    text = str(value).lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError("an access key's sha256 is not 64 hex digits")
    return text


def _timeouts(data: Any) -> Timeouts:
    """A node's timeouts; a table written before they existed has none, and gets defaults."""
    defaults = DEFAULT_TIMEOUTS
    if data is None:
        return defaults
    timeouts = Timeouts(
        float(data.get("request", defaults.request)), float(data.get("idle", defaults.idle))
    )
    if not (timeouts.request > 0 and timeouts.idle > 0):
        raise TableError(f"malformed routing table: timeouts must be above 0, got {data}")
    return timeouts


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


def _flag(value: Any) -> bool:
    """An optional boolean field: absent is False, anything but a boolean is malformed."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise TableError(f"malformed routing table: expected true or false, got {value!r}")
    return value


def _optional_lower(value: Any) -> str | None:
    return str(value).lower() if value else None


def _endpoint_to_json(endpoint: Endpoint) -> dict[str, Any]:
    data: dict[str, Any] = {
        "instance": endpoint.instance,
        "host": endpoint.host,
        "port": endpoint.port,
    }
    if endpoint.telemetry_port is not None:  # rare: kept out of the common endpoint
        data["telemetryPort"] = endpoint.telemetry_port
    if endpoint.socket is not None:
        data["socket"] = endpoint.socket
    return data


def _optional_socket(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise TableError(f"malformed routing table: socket {value!r} is not an absolute path")
    return value


def _check_node(name: str, entry: NodeEntry) -> None:
    """What from_json's conversions let through but the balancer cannot serve: a port
    outside 1..65535, a health check repeated without pause (an interval of 0 spun the
    checker) or of no time at all."""
    for endpoint in entry.endpoints:
        for port in (endpoint.port, endpoint.telemetry_port):
            if port is not None and not 0 < port <= 65535:
                raise TableError(f"malformed routing table: node {name}: port {port}")
    health = entry.health
    for what, value in (("interval", health.interval), ("timeout", health.timeout)):
        if not isinstance(value, int | float) or not 0 < value < math.inf:
            raise TableError(f"malformed routing table: node {name}: health {what} {value!r}")


def _optional_port(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_path(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise TableError(f"malformed routing table: telemetryPath {value!r} is not a path")
    return value


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


# orjson, not json: with indent the standard library falls back to its pure-Python encoder.
_DUMP_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS


def _fragment(data: Any, depth: int) -> orjson.Fragment:
    """data as orjson writes it `depth` levels down in an indented document (JSON text holds
    no raw newline but between tokens, so indenting its lines is all that differs)."""
    text = orjson.dumps(data, option=_DUMP_OPTIONS)
    return orjson.Fragment(text.replace(b"\n", b"\n" + b"  " * depth))


class TableEncoder:
    """Encodes successive tables exactly as a fresh encoding does, reusing each node's text
    (and the aliases' as a whole) from the table encoded before while its entry is the same
    object. Apply publishes hundreds of tables in a row that share every entry their change
    did not touch: encoding each whole made its writes cost the square of the nodes (at 500
    nodes of one instance, 2.1 ms of Python per write; 0.16 ms so). One encoder serves one
    writer at a time."""

    def __init__(self) -> None:
        # node -> (its entry, the entry's text, whether it is private), as last encoded
        self._nodes: dict[str, tuple[NodeEntry, orjson.Fragment, bool]] = {}
        self._aliases: tuple[Mapping[str, AliasEntry], orjson.Fragment, bool] | None = None

    def encode(self, table: RoutingTable) -> bytes:
        aliases = self._aliases
        if aliases is None or aliases[0] is not table.aliases:
            text = {name: alias_to_json(alias) for name, alias in table.aliases.items()}
            private = any(alias.access is not None for alias in table.aliases.values())
            aliases = self._aliases = (table.aliases, _fragment(text, 1), private)
        private = aliases[2]
        before = self._nodes
        nodes: dict[str, tuple[NodeEntry, orjson.Fragment, bool]] = {}
        texts: dict[str, orjson.Fragment] = {}
        for name, entry in table.nodes.items():  # one pass: at every write, for every node
            kept = before.get(name)
            if kept is None or kept[0] is not entry:
                kept = (entry, _fragment(node_to_json(entry), 2), entry.access is not None)
            nodes[name] = kept
            texts[name] = kept[1]
            if kept[2]:
                private = True
        self._nodes = nodes
        data = {
            "format": FORMAT_WITH_ACCESS if private else FORMAT,
            "generation": table.generation,
            "nodes": texts,
            "aliases": aliases[1],
        }
        return orjson.dumps(data, option=_DUMP_OPTIONS)


def encode_table(table: RoutingTable) -> bytes:
    """The table's file content: its JSON, indented, keys sorted, as UTF-8."""
    return orjson.dumps(table.to_json(), option=_DUMP_OPTIONS)


def write_table(path: Path, table: RoutingTable, encoder: TableEncoder | None = None) -> None:
    """Replace the file at path with table, atomically: readers see the old file or the new.
    encoder: the writer's own, when it writes many tables that share their entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = encoder.encode(table) if encoder is not None else encode_table(table)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
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
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TableError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")  # what write_table writes, whatever the locale
    except UnicodeDecodeError as exc:
        raise TableError(f"{path} is not UTF-8 text: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TableError(f"{path} is not valid JSON: {exc}") from exc
    except RecursionError:  # nested deeper than the parser's stack: no table is
        raise TableError(f"{path} is not a routing table: its JSON is nested too deeply") from None
    return RoutingTable.from_json(data)
