"""The header lines an instance gets with a request: one pure function for every path.

`forward()` decides, from a request's Head, what the balancer saw of its last hop (`Hop`) and
the target it routes to, whether the request may go on (401/403 on a private
target) and which header lines go with it. Both the proxy path (client.py) and the execute API
(execute.py) use it, so the rules below hold for both:

- Access keys never reach an instance. On a private target every `x-api-key` line, every
  `Authorization: Api-Key ...` line and every line carrying the key that was admitted are
  dropped, whatever the case of their names and however many there are, and so is a Bearer
  credential that is any key the balancer knows; a service's own `Authorization: Bearer
  <token>` sent beside an `x-api-key` goes on. The instance learns the caller's name in
  `x-gitops-nodes-caller`, which no client can set itself.
- Forwarding headers. From a trusted proxy (`--trusted-proxies`), every `X-Forwarded-For` line
  is kept, joined in order, and the client's address appended; `Forwarded` (RFC 7239) likewise
  gets the balancer's element appended; `X-Forwarded-Proto`, `X-Forwarded-Host` and
  `X-Forwarded-Prefix` are passed on. From anyone else all of those are replaced by what the
  balancer saw: the peer's address, `http` (the balancer speaks plain HTTP), the `Host` it was
  sent. On a prefix route (`/nodes/<n>/...`, `/aliases/<a>/...`) `X-Forwarded-Prefix` names
  that prefix (after a trusted proxy's own).
- `x-request-id` is left to the caller, which writes exactly one line: the client's when it
  sent a usable one (Head.request_id: the first of several), else one the balancer made.
  So the result depends on the head, the hop and the route alone, and a connection that
  sends the same head again reuses it (client.py) without deciding anew.
- The affinity key: the value of the alias's `sessionAffinity.header`, if the request has one.

No I/O and no state but two bounded memos of pure results; tested alone in
tests/unit/test_forwarding.py.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from balancer.access import Denial, Guard, presented_key
from balancer.head import Head
from balancer.http import CALLER_HEADER

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_API_KEY_SCHEME = b"api-key "
_BEARER_SCHEME = b"bearer "


class Hop(NamedTuple):
    """What the balancer saw of a request's last hop: fixed for a client connection."""

    address: bytes  # the peer's IP as text; b"unknown" when it has none (a Unix socket)
    trusted: bool  # the peer is a trusted proxy: its forwarding headers are believed
    node: bytes  # the address as an RFC 7239 node: 192.0.2.1, "[2001:db8::1]", unknown


def hop_of(address: str, trusted: bool) -> Hop:
    """The Hop of a client at address (an IP as text, or "" / "unknown" for none)."""
    if not address or address == "unknown":
        return Hop(b"unknown", trusted, b"unknown")
    text = address.encode("latin-1")
    node = b'"[%s]"' % text if b":" in text else text  # IPv6 is quoted and bracketed
    return Hop(text, trusted, node)


class Forward(NamedTuple):
    """A request that may go on: its header lines for the instance, and what was decided."""

    lines: bytes  # CRLF-terminated header lines, without the request line and the framing
    caller: str | None  # a private target's admitted caller, by name
    affinity_key: bytes | None


def forward(
    head: Head,
    hop: Hop,
    guard: Guard | None = None,
    affinity_header: bytes | None = None,
    prefix: bytes = b"",
    folder: str | None = None,
    replace: bytes = b"",
) -> Forward | Denial:
    """Whether the request may go on to an instance, and the header lines it goes with.

    guard: a private target's rule (None: public); affinity_header: the alias's
    sessionAffinity header, lowercase; prefix: the route's prefix as the client wrote it
    (/nodes/a), b"" when routed by a header.
    folder: the folder an execute call's body names, for a private target's folder rule.
    replace: lines the caller sets itself (name: value CRLF); the client's lines of the same
    names are dropped (the execute API's content-type).
    """
    kept = head.kept
    caller = None
    if guard is not None:
        headers = head.headers
        if folder is not None and not any(n.lower() == b"x-folder-id" for n, _ in headers):
            headers = (*headers, (b"x-folder-id", folder.encode("latin-1")))
        verdict = guard.admit(headers)
        if isinstance(verdict, Denial):
            return verdict
        caller = verdict
        kept = without_keys(kept, presented_key(headers), guard.keyring)
    if replace:
        kept = _without_names(kept, replace)

    affinity_key = None
    if affinity_header is not None:
        affinity_key = next((v for n, v in head.headers if n.lower() == affinity_header), None)

    host = head.host
    if hop.trusted:
        chain = head.forwarded_for
        forwarded_for = chain + b", " + hop.address if chain else hop.address
        proto = head.forwarded_proto or b"http"
        forwarded_host = head.forwarded_host or host
        outer = head.forwarded_prefix
        forwarded_prefix = outer.rstrip(b"/") + prefix if prefix else outer
        element = _element(hop.node, host)
        forwarded = head.forwarded + b", " + element if head.forwarded else element
    else:
        forwarded_for = hop.address
        proto = b"http"
        forwarded_host = host
        forwarded_prefix = prefix
        forwarded = _element(hop.node, host)
    lines = b"%s%sx-forwarded-for: %s\r\nx-forwarded-proto: %s\r\nforwarded: %s\r\n" % (
        kept,
        replace,
        forwarded_for,
        proto,
        forwarded,
    )
    if forwarded_host:
        lines += b"x-forwarded-host: %s\r\n" % forwarded_host
    if forwarded_prefix:
        lines += b"x-forwarded-prefix: %s\r\n" % forwarded_prefix
    if caller is not None:
        lines += b"%s: %s\r\n" % (CALLER_HEADER, caller.encode())
    return Forward(lines, caller, affinity_key)


def without_keys(
    kept: bytes, presented: bytes | None, keyring: frozenset[bytes] = frozenset()
) -> bytes:
    """Header lines (CRLF-terminated, joined) without any that carry an access key: every
    x-api-key line, every Authorization line with the Api-Key scheme, and every one with the
    Bearer scheme whose credential is the key presented (access.presented_key) or any key
    the balancer knows (keyring: their SHA-256 digests)."""
    out = []
    for line in kept.split(b"\r\n"):
        if not line:
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"x-api-key":
            continue
        if name == b"authorization":
            stripped = value.strip()
            if stripped[:8].lower() == _API_KEY_SCHEME:
                continue
            credential = _credential(stripped)
            if credential is not None and (
                credential == presented or hashlib.sha256(credential).digest() in keyring
            ):
                continue
        out.append(line + b"\r\n")
    return b"".join(out)


def _credential(value: bytes) -> bytes | None:
    """The credential of an Authorization value with the Bearer or Api-Key scheme."""
    stripped = value.strip()
    scheme = stripped[:8].lower()
    for known in (_BEARER_SCHEME, _API_KEY_SCHEME):
        if scheme.startswith(known):
            return stripped[len(known) :].strip() or None
    return None


def _without_names(kept: bytes, replace: bytes) -> bytes:
    names = {line.partition(b":")[0].strip().lower() for line in replace.split(b"\r\n") if line}
    return b"".join(
        line + b"\r\n"
        for line in kept.split(b"\r\n")
        if line and line.partition(b":")[0].strip().lower() not in names
    )


_ELEMENTS: dict[tuple[bytes, bytes], bytes] = {}
_ELEMENTS_LIMIT = 1024


def _element(node: bytes, host: bytes) -> bytes:
    """The balancer's own Forwarded element: for=<client>;host=<host>;proto=http.

    Clients and hosts repeat, so elements are remembered, boundedly.
    """
    key = (node, host)
    found = _ELEMENTS.get(key)
    if found is None:
        found = b"for=" + node
        if host:
            found += b";host=" + forwarded_value(host)
        found += b";proto=http"
        if len(_ELEMENTS) >= _ELEMENTS_LIMIT:
            _ELEMENTS.clear()
        _ELEMENTS[key] = found
    return found


def forwarded_value(value: bytes) -> bytes:
    """A Forwarded parameter's value: a token as it is, anything else a quoted string."""
    if _TOKEN.fullmatch(value):
        return value
    return b'"%s"' % value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
