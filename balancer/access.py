"""Access control: who may call a private node or alias, and the admin port's key.

A request presents its key as `Authorization: Bearer <key>`, `Authorization: Api-Key <key>`
(the reference platform's form) or `x-api-key: <key>`, and its folder as `x-folder-id`.
The routing table holds only each key's SHA-256 (balancer/table.py); here a presented key is
hashed once and compared with `hmac.compare_digest` against every digest the target allows.
Everything that does not depend on the request (digests as bytes, the table's keyring,
the answers' messages) is compiled once per table swap into a Guard; public targets have no
Guard and pay nothing but one attribute check.

No key ever goes into a message, a log line or a repr: denials name the target, and the
caller's name (from the spec) is all that is reported about who called.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from balancer.table import AccessRule, RoutingTable

MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 4096
ADMIN_TOKEN_ENV = "GITOPS_NODES_ADMIN_TOKEN"
ADMIN_TOKEN_FILE_ENV = "GITOPS_NODES_ADMIN_TOKEN_FILE"
CHALLENGE = 'Bearer realm="gitops-nodes"'
CHALLENGE_LINE = b"www-authenticate: %s\r\n" % CHALLENGE.encode()  # with every 401
_SCHEMES = (b"bearer ", b"api-key ")
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key"})


class AccessConfigError(Exception):
    """Access control configured in a way that cannot be served safely (an admin port beyond
    loopback without a key, a key that is too short)."""


def key_problem(key: str) -> str | None:
    """What is wrong with a key's text, in words that never include the key; None if fine."""
    if len(key) < MIN_KEY_LENGTH:
        return f"expected a key of at least {MIN_KEY_LENGTH} characters, it has fewer"
    if len(key) > MAX_KEY_LENGTH:
        return f"expected a key of at most {MAX_KEY_LENGTH} characters, it has more"
    if not all("!" <= c <= "~" for c in key):
        return "expected a key of printable ASCII characters without spaces"
    return None


def key_digest(key: str) -> str:
    """The hex SHA-256 of a key: what the routing table carries instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request presents: `x-api-key`, else `Authorization: Bearer|Api-Key <key>`
    (x-api-key first, so a service's own bearer token can travel beside it). Header names may
    come in any case (the data plane's) or lowercase (ASGI's)."""
    authorization = None
    for name, value in headers:
        lower = name.lower()
        if lower == b"x-api-key" and value.strip():
            return value.strip()
        if lower == b"authorization" and authorization is None:
            head = value[:8].lower()
            for scheme in _SCHEMES:
                if head.startswith(scheme):
                    authorization = value[len(scheme) :].strip() or None
    return authorization


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request may not go on: 401 (no or unknown key) or 403 (not allowed here)."""

    status: int
    message: str


class Guard:
    """One private target's rule, compiled for the hot path."""

    __slots__ = (
        "digests",
        "folders",
        "forbidden",
        "keyring",
        "missing",
        "names",
        "no_folder",
        "unknown",
        "wrong_folder",
    )

    def __init__(self, kind: str, target: str, rule: AccessRule, keyring: frozenset[bytes]):
        self.digests = tuple(bytes.fromhex(k.sha256) for k in rule.keys)
        self.names = tuple(k.name for k in rule.keys)
        self.folders = frozenset(f.encode() for f in rule.folders)
        self.keyring = keyring  # every key of the table: known elsewhere is 403, not 401
        what = f"{kind} {target!r}"
        self.missing = Denial(
            401,
            f"{what} is private: send its key as Authorization: Bearer <key>, "
            "Authorization: Api-Key <key> or x-api-key: <key>",
        )
        self.unknown = Denial(401, f"the key sent is not valid for {what} or anything else here")
        self.forbidden = Denial(403, f"the key sent is not one of the keys of {what}")
        self.no_folder = Denial(403, f"{what} needs an x-folder-id header naming its folder")
        self.wrong_folder = Denial(403, f"the folder in x-folder-id may not call {what}")

    def admit(self, headers: Sequence[tuple[bytes, bytes]]) -> str | Denial:
        """The caller's name when the request may go on, else why not."""
        key = presented_key(headers)
        if key is None:
            return self.missing
        digest = hashlib.sha256(key).digest()
        caller = None
        # Every digest is compared, in constant time each: how long this takes says nothing
        # about which key, or how much of one, matched.
        for position, allowed in enumerate(self.digests):
            if hmac.compare_digest(allowed, digest):
                caller = self.names[position]
        if caller is None:
            return self.forbidden if digest in self.keyring else self.unknown
        if self.folders:
            folder = folder_of(headers)
            if folder is None:
                return self.no_folder
            if folder not in self.folders:
                return self.wrong_folder
        return caller


def folder_of(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name.lower() == b"x-folder-id":
            return value.strip()
    return None


@dataclass(frozen=True)
class Guards:
    """The guards of one routing table's private nodes and aliases, by name."""

    nodes: Mapping[str, Guard] = field(default_factory=dict)
    aliases: Mapping[str, Guard] = field(default_factory=dict)


def compile_guards(table: RoutingTable) -> Guards:
    """Guards for every private target of table (once per swap, never per request)."""
    if not table.has_access_rules():
        return Guards()
    rules = [
        *(e.access for e in table.nodes.values() if e.access),
        *(e.access for e in table.aliases.values() if e.access),
    ]
    keyring = frozenset(bytes.fromhex(k.sha256) for rule in rules for k in rule.keys)
    return Guards(
        nodes={n: Guard("node", n, e.access, keyring) for n, e in table.nodes.items() if e.access},
        aliases={
            n: Guard("alias", n, e.access, keyring) for n, e in table.aliases.items() if e.access
        },
    )


# -- the admin port -------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether a listening address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost, or "" (every address)


class AdminGuard:
    """The admin port's key, kept as a digest; `/-/healthz` never needs it."""

    __slots__ = ("digest",)

    def __init__(self, token: str) -> None:
        problem = key_problem(token)
        if problem is not None:
            raise AccessConfigError(f"the admin key ({ADMIN_TOKEN_ENV}): {problem}")
        self.digest = hashlib.sha256(token.encode()).digest()

    def admits(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        key = presented_key(headers)
        given = hashlib.sha256(key or b"").digest()
        return hmac.compare_digest(self.digest, given) and key is not None


def admin_guard(host: str, token: str | None) -> AdminGuard | None:
    """The admin port's guard: required beyond loopback; a configured key is always enforced."""
    if token is not None:
        return AdminGuard(token)
    if not is_loopback(host):
        raise AccessConfigError(
            f"the admin port would listen on {host or 'every address'}, beyond loopback, "
            f"without a key: set {ADMIN_TOKEN_ENV} (or {ADMIN_TOKEN_FILE_ENV}, a file holding "
            f"it) to a key of at least {MIN_KEY_LENGTH} characters, or keep --admin-host on "
            "127.0.0.1"
        )
    return None
