"""What the engine's records of a container say about an instance: its labels, its published
loopback ports, its state. Read from a listing's summaries (GET /containers/json) or one
container's inspect, through the Docker SDK or the engine's socket alike, so no SDK here."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from gitops_nodes.live import LiveInstance
from gitops_nodes.runtime import labels

LOOPBACK = "127.0.0.1"  # where instances publish their ports
# How the engine lists a dangling image's tags (one that a rebuild under its tag left behind).
UNTAGGED = "<none>:<none>"


def instances_listed(summaries: list[dict[str, Any]]) -> list[LiveInstance]:
    """The instances among a container listing's summaries (others' containers skipped)."""
    return [i for i in map(from_summary, summaries) if i is not None]


def tags_listed(images: list[dict[str, Any]]) -> set[str]:
    """Every tag of an image listing, without the dangling ones' `<none>:<none>`."""
    return {tag for image in images for tag in image.get("RepoTags") or () if tag != UNTAGGED}


def image_names(image: dict[str, Any]) -> list[str]:
    """The names to remove an image by, from the engine's image listing: its tags, or its id
    when it has none (the name `<none>:<none>` is not a reference the engine takes)."""
    tags = [tag for tag in image.get("RepoTags") or () if tag != UNTAGGED]
    return tags or [image["Id"]]


def instance_of(
    name: str,
    label_map: dict[str, str],
    state: str,
    published: dict[int, int],
    started: float | None,
) -> LiveInstance | None:
    """An instance from its labels and published ports ({container port: loopback port})."""
    node = label_map.get(labels.NODE)
    index = label_map.get(labels.INDEX, "")
    if not node or not index.isdigit():
        return None
    config = labels.config_of(label_map.get(labels.CONFIG))
    if config is None:  # no readable config: its only published port is the serving one
        port = next(iter(published.values()), None)
        telemetry_port = None
    else:
        port = published.get(config.port)
        telemetry_port = (
            published.get(config.telemetry_port) if config.telemetry_port is not None else None
        )
    return LiveInstance(
        name=name,
        node=node,
        index=int(index),
        spec_hash=label_map.get(labels.SPEC_HASH, ""),
        config=config,
        state=state,
        port=port,
        started_at=started,
        telemetry_port=telemetry_port,
        socket=label_map.get(labels.SOCKET) or None,
        owner=label_map.get(labels.OWNER, ""),
    )


def from_summary(summary: dict[str, Any]) -> LiveInstance | None:
    published = {
        int(p["PrivatePort"]): int(p["PublicPort"])
        for p in summary.get("Ports") or ()
        if p.get("IP") == LOOPBACK and p.get("PublicPort") and p.get("PrivatePort")
    }
    name = (summary.get("Names") or ["/?"])[0].lstrip("/")
    created = summary.get("Created")
    return instance_of(
        name,
        summary.get("Labels") or {},
        summary.get("State", ""),
        published,
        float(created) if created else None,
    )


def from_inspect(data: dict[str, Any]) -> LiveInstance | None:
    published: dict[int, int] = {}
    for key, bindings in (data["NetworkSettings"].get("Ports") or {}).items():
        container_port = key.split("/", 1)[0]  # "8080/tcp"
        if not container_port.isdigit():
            continue
        for binding in bindings or ():
            if binding.get("HostIp") == LOOPBACK and binding.get("HostPort"):
                published[int(container_port)] = int(binding["HostPort"])
    state = data["State"]
    return instance_of(
        data["Name"].lstrip("/"),
        data["Config"]["Labels"] or {},
        state.get("Status", ""),
        published,
        timestamp(state.get("StartedAt")),
    )


def timestamp(text: str | None) -> float | None:
    if not text or text.startswith("0001"):
        return None
    # The engine writes nanoseconds and "Z"; fromisoformat takes at most microseconds.
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,6})?", text)
    if match is None:
        return None
    stamp = match.group(1) + (match.group(2) or "") + "+00:00"
    return datetime.fromisoformat(stamp).timestamp()
