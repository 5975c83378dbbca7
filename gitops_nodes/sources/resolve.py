"""A spec's model source resolved: fetched into the cache (unless it is there), verified, and
described for plans (`s3://b/k → sha256:…, 12 MB`, `models:/iris@champion → version 7`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from gitops_nodes.errors import GitopsNodesError
from gitops_nodes.sources.cache import Cache, Entry
from gitops_nodes.spec.models import ModelSource

# Environment variables whose values are credentials: blanked out of every message.
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


class SourceError(GitopsNodesError):
    """A source could not be resolved: not found, denied, unreachable, or not what was pinned.
    The message names the source; the loader adds the node and the field."""


@dataclass(frozen=True)
class Resolved:
    """A source as it went into the image: the cache entry and what plans show of it."""

    field: str  # where the spec names it: checkpoint, files.vocab.json, models.model
    shown: str  # the source as written (s3://b/k, models:/iris@champion)
    resolved: str  # what it resolved to: "sha256:…, 12 MB", "version 7, sha256:…, 3 kB"
    entry: Entry
    fetched: bool  # downloaded by this resolve (False: the cache had it)
    requirements: tuple[str, ...] = ()  # an MLflow model's pinned requirements, if any

    def to_json(self) -> dict[str, object]:
        return {"field": self.field, "source": self.shown, "resolved": self.resolved}


def resolve(source: ModelSource, field: str, cache: Cache | None = None) -> Resolved:
    """Fetch (or find in the cache) and verify one source; SourceError says what failed."""
    cache = cache or Cache()
    try:
        if source.mlflow is not None:
            from gitops_nodes.sources.registry import fetch_mlflow

            return fetch_mlflow(source.mlflow, field, cache)
        from gitops_nodes.sources.remote import fetch_url

        url = source.url or ""
        entry, fetched = fetch_url(url, source.sha256, cache)
        return Resolved(field, url, describe(entry), entry, fetched)
    except SourceError as exc:
        raise SourceError(redact(str(exc))) from None


def describe(entry: Entry) -> str:
    """sha256:<12 hex>…, <size>: the short form plans show."""
    return f"sha256:{entry.digest[:12]}…, {human_size(entry.size)}"


def human_size(size: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def redact(text: str) -> str:
    """text without the environment's credentials, nor a user and password in any URL."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return _USERINFO.sub("***@", text)


def shown_uri(uri: str) -> str:
    """A URI as messages may show it: without user, password, or query."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else uri
