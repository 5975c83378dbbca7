"""Where `watch` tells people what happened: the `notifications:` targets of gitops-nodes.yaml.

    notifications:
      - name: ops
        type: webhook                       # a JSON POST; or slack (an incoming webhook)
        url: https://hooks.example.com/gitops         # a literal URL, or instead:
        # urlFrom: {fromEnv: OPS_HOOK_URL}            # read where watch runs (or fromFile)
        hmacKey: {fromEnv: OPS_HOOK_KEY}    # optional, webhook only: signs each body
        events: [failed, recovered]         # default: every event

A webhook URL (a Slack one above all) and an HMAC key are secrets: they are read from the
environment or a file where `watch` runs, on every revision, and leave this module only in a
ResolvedTarget whose repr hides them. No message here repeats one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from gitops_nodes.spec.access import environment_variable
from gitops_nodes.spec.models import DnsLabel, KeyEnv, KeyFile, SpecModel

EVENTS = ("applied", "failed", "recovered", "driftHealed", "rolloutStep", "rolledBack")
Event = Literal["applied", "failed", "recovered", "driftHealed", "rolloutStep", "rolledBack"]


def _every_event() -> list[Event]:
    return ["applied", "failed", "recovered", "driftHealed", "rolloutStep", "rolledBack"]


MAX_SECRET_BYTES = 8192  # a URL or a key, not whatever file was named

Loc = tuple[str | int, ...]


class SecretSource(SpecModel):
    """Where watch reads a secret (a webhook URL, an HMAC key) when it runs: an environment
    variable or a file outside the repository, never the secret itself."""

    from_env: KeyEnv | None = Field(
        default=None, description="The environment variable holding the secret."
    )
    from_file: KeyFile | None = Field(
        default=None, description="The absolute path of a file holding the secret."
    )

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        if (self.from_env is None) == (self.from_file is None):
            raise PydanticCustomError(
                "secret_source",
                "expected exactly one of 'fromEnv' (an environment variable) or 'fromFile' "
                "(a file outside the repository) holding the secret",
            )
        return self


class NotificationTarget(SpecModel):
    """One place watch sends its events to: a JSON webhook or a Slack incoming webhook."""

    name: DnsLabel = Field(description="The target's name, as the log shows it (never its URL).")
    type: Literal["webhook", "slack"] = Field(
        description="webhook: a JSON POST of the event; slack: a Slack-compatible incoming "
        'webhook ({"text": ...}).'
    )
    url: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="The URL to POST to, written out; use urlFrom for one that is a secret.",
    )
    url_from: SecretSource | None = Field(
        default=None, description="Where watch reads the URL: fromEnv or fromFile."
    )
    hmac_key: SecretSource | None = Field(
        default=None,
        description="webhook only: the key of the X-Gitops-Nodes-Signature header "
        "(sha256=<hex HMAC-SHA256 of the body>), read from fromEnv or fromFile.",
    )
    events: list[Event] = Field(
        default_factory=_every_event,
        min_length=1,
        description="The events sent to this target (default: all): applied, failed, "
        "recovered, driftHealed, rolloutStep, rolledBack.",
    )

    @model_validator(mode="after")
    def _checks(self) -> NotificationTarget:
        if (self.url is None) == (self.url_from is None):
            raise PydanticCustomError(
                "notification_url",
                "expected exactly one of 'url' (written out) or 'urlFrom' (fromEnv or fromFile)",
            )
        if self.hmac_key is not None and self.type != "webhook":
            raise PydanticCustomError(
                "notification_hmac", "expected no 'hmacKey': only a webhook target signs"
            )
        if len(set(self.events)) != len(self.events):
            raise PydanticCustomError("notification_events", "expected each event once")
        return self


@dataclass(frozen=True)
class ResolvedTarget:
    """A target with its secrets read: what the sender needs, shown without them."""

    name: str
    type: str
    events: frozenset[str]
    url: str = field(repr=False)
    hmac_key: bytes | None = field(default=None, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values that must never appear in a log line or a message."""
        key = (self.hmac_key.decode(errors="replace"),) if self.hmac_key else ()
        return (self.url, *key)


def resolve_targets(
    targets: list[NotificationTarget], environ: Mapping[str, str]
) -> tuple[tuple[ResolvedTarget, ...], list[tuple[Loc, str]]]:
    """The targets with their URLs and keys read, or the problems (field path in the settings
    file, message) that kept one from being read."""
    resolved: list[ResolvedTarget] = []
    problems: list[tuple[Loc, str]] = []
    for position, target in enumerate(targets):
        at: Loc = ("notifications", position)
        url = target.url
        if target.url_from is not None:
            url, field_name, trouble = _read(target.url_from, environ, "the URL")
            if url is not None and not url.startswith(("http://", "https://")):
                trouble = f"{_where(target.url_from)} does not hold an http:// or https:// URL"
            if trouble is not None:
                problems.append(((*at, "urlFrom", field_name), trouble))
        key = None
        if target.hmac_key is not None:
            key, field_name, trouble = _read(target.hmac_key, environ, "the HMAC key")
            if trouble is not None:
                problems.append(((*at, "hmacKey", field_name), trouble))
        if url is None or (target.hmac_key is not None and key is None):
            continue
        resolved.append(
            ResolvedTarget(
                target.name,
                target.type,
                frozenset(target.events),
                url,
                key.encode() if key is not None else None,
            )
        )
    return tuple(resolved), problems


def _where(source: SecretSource) -> str:
    if source.from_env is not None:
        return environment_variable(source.from_env)  # a key pasted there is not echoed
    return f"the file {source.from_file}"


def _read(
    source: SecretSource, environ: Mapping[str, str], what: str
) -> tuple[str | None, str, str | None]:
    """(the secret, the field that names its source, why it could not be read)."""
    if source.from_env is not None:
        value = environ.get(source.from_env, "").strip()
        if not value:
            return (
                None,
                "fromEnv",
                (
                    f"{environment_variable(source.from_env)} is not set or empty; set it to "
                    f"{what} where gitops-nodes watch runs"
                ),
            )
        return value, "fromEnv", None
    assert source.from_file is not None  # the model requires exactly one source
    path = Path(source.from_file)
    # Opened without blocking and checked to be a regular file, then read only as far as a
    # secret can be, so a FIFO or a device named by mistake is refused rather than waited on.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return None, "fromFile", f"cannot read {path}: {exc.strerror or type(exc).__name__}"
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None, "fromFile", f"{path} is not a regular file; expected a file with {what}"
        data = os.read(descriptor, MAX_SECRET_BYTES + 1)
    except OSError as exc:
        return None, "fromFile", f"cannot read {path}: {exc.strerror or type(exc).__name__}"
    finally:
        os.close(descriptor)
    try:
        value = data.decode().strip()
    except UnicodeDecodeError:
        return None, "fromFile", f"{path} is not UTF-8 text; expected {what}"
    if not value or len(data) > MAX_SECRET_BYTES:
        return None, "fromFile", f"{path} is empty or too long; expected {what}"
    return value, "fromFile", None
