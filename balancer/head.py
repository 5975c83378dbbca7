"""A request's head as the balancer reads it: worked out once, and remembered by its bytes.

Everything the data plane needs from a request's head lines (its target, framing, the
forwarding headers it brings, the lines passed on as they are) depends on those bytes alone,
so it is computed into an immutable `Head`. Routing (which alias, node and instance, answers
such as 404 and 413) is not part of it: that reads the routing table of the moment.

Clients of a model API send the same head over and over (the same URL, the same few headers,
the same content-length), so a Head is also remembered by the exact bytes it was parsed from
(`HeadCache`). A read that holds one whole request whose head was seen before is then served
without the HTTP parser at all; the entry was made by the parser from identical bytes, so the
two paths cannot disagree. Heads that carry their own request id, chunked or `Expect` heads,
and heads of requests the balancer answers itself are not remembered.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from balancer.http import (
    ALIAS_PREFIX,
    EXECUTE_PREFIX,
    HOP_BY_HOP,
    REWRITTEN,
    split_target,
    without_connection_tokens,
)

BAD_LENGTH = -2  # content_length of a head whose content-length is not a number
FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"forwarded",
    }
)
MAX_REQUEST_ID = 200
_REQUEST_ID = re.compile(rb"[!-~]{1,%d}" % MAX_REQUEST_ID)


def usable_request_id(value: bytes) -> bool:
    """Whether a client's x-request-id is used as the request's id: 1 to 200 visible ASCII
    characters (it is echoed in a header and in JSON). Otherwise the balancer makes one."""
    return _REQUEST_ID.fullmatch(value) is not None


class Head(NamedTuple):
    """What a request's head says: its target, framing and the headers passed on."""

    method: bytes
    target: bytes
    version: str
    keep_alive: bool
    path: bytes  # what goes upstream as the request target
    alias: str | None
    node: str | None
    content_length: int  # -1 when absent, BAD_LENGTH when not a number
    chunked: bool
    expect_continue: bool
    kept: bytes  # header lines forwarded as they came, CRLF-terminated, joined
    # The client's forwarding headers, each name's lines joined by ", " in order (believed
    # only from a trusted proxy: balancer/forwarding.py); b"" when absent.
    forwarded_for: bytes
    forwarded_proto: bytes
    forwarded_host: bytes
    forwarded_prefix: bytes
    forwarded: bytes  # RFC 7239 Forwarded
    host: bytes  # the first Host line's value, b"" without one
    prefix: bytes  # /aliases/<a> or /nodes/<n> as the target began with it; b"" by header
    request_id: bytes  # the client's own x-request-id (the first usable one), or b""
    folder_id: str | None  # x-folder-id, for access control (it is sent on as well)
    headers: tuple[tuple[bytes, bytes], ...]  # all of them, for per-alias lookups (affinity)
    # A transfer coding other than chunked (gzip, chunked): answered 501, never forwarded,
    # since the body is sent on re-framed and its coding would be lost. b"" when none.
    unsupported_coding: bytes = b""

    @property
    def rememberable(self) -> bool:
        """Whether the next request with these exact head bytes may skip the parser."""
        return (
            (self.alias is not None or self.node is not None)
            and not self.target.startswith(EXECUTE_PREFIX)  # its body is read whole first
            and not self.chunked
            and not self.expect_continue
            and self.content_length != BAD_LENGTH
            and not self.request_id
            and not self.unsupported_coding
        )


def read_head(
    method: bytes,
    target: bytes,
    version: str,
    keep_alive: bool,
    headers: list[tuple[bytes, bytes]],
) -> Head:
    """The Head of a request, from what the parser gave (headers in order, as sent)."""
    alias_name = node_name = None
    content_length = -1
    chunked = expect_continue = False
    request_id = connection = host = b""
    chains: dict[bytes, list[bytes]] = {}  # the forwarding headers' values, by name
    folder_id = None
    kept: list[bytes] = []
    codings: list[bytes] = []
    if not target.startswith(b"/") and b"://" in target[:9]:
        target, authority = origin_form(target)
        host = authority  # RFC 9112 3.2.2: the target's authority, not the Host line
    for name, value in headers:
        lower = name.lower()
        if lower == b"x-node-alias":
            alias_name = value.decode("latin-1")
        elif lower == b"x-node-id":
            node_name = value.decode("latin-1")
        elif lower == b"content-length":
            content_length = int(value) if value.isdigit() else BAD_LENGTH
        elif lower == b"transfer-encoding":
            codings += (c.strip() for c in value.lower().split(b","))
            chunked = codings[-1:] == [b"chunked"]
        elif lower in FORWARDING:
            chains.setdefault(lower, []).append(value.strip())
        elif lower == b"x-request-id":
            if not request_id and usable_request_id(value):
                request_id = value
        elif lower == b"host":
            host = host or value
        elif lower == b"expect":
            expect_continue = value.lower() == b"100-continue"
        elif lower == b"connection":
            connection = value
        elif lower == b"x-folder-id":
            folder_id = value.decode("latin-1")
        if lower in HOP_BY_HOP or lower in REWRITTEN:
            continue
        kept.append(b"%s: %s\r\n" % (name, value))
    if connection:
        kept = without_connection_tokens(kept, connection)
    path = target
    prefix = b""
    if alias_name is None and node_name is None:
        path, alias_name, node_name = split_target(target)
        routed = alias_name if alias_name is not None else node_name
        if routed is not None:  # the target began /aliases/<name> or /nodes/<name>
            prefix = target[: (9 if alias_name is not None else 7) + len(routed)]
    if alias_name is not None and alias_name.startswith(ALIAS_PREFIX):
        alias_name = alias_name[len(ALIAS_PREFIX) :]
    if content_length >= 0:
        chunked = False  # a content-length frames the body we send on
    # Only when chunked comes last: a body whose last coding is not chunked has no length
    # to be found, and the parser refuses it (400, as RFC 9112 6.3 asks).
    unsupported = next((c for c in codings if c != b"chunked"), b"") if chunked else b""
    return Head(
        method,
        target,
        version,
        keep_alive,
        path,
        alias_name,
        node_name,
        content_length,
        chunked,
        expect_continue,
        b"".join(kept),
        b", ".join(chains.get(b"x-forwarded-for", ())),
        b", ".join(chains.get(b"x-forwarded-proto", ())),
        b", ".join(chains.get(b"x-forwarded-host", ())),
        b"".join(v.rstrip(b"/") for v in chains.get(b"x-forwarded-prefix", ())),
        b", ".join(chains.get(b"forwarded", ())),
        host,
        prefix,
        request_id,
        folder_id,
        tuple(headers),
        unsupported,
    )


def origin_form(target: bytes) -> tuple[bytes, bytes]:
    """(path and query, authority) of an absolute-form target (http://host:port/path?q),
    which a server must accept (RFC 9112 3.2.2), as clients set to use a proxy send it."""
    rest = target.partition(b"://")[2]
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    path = rest[cut:]
    authority = rest[:cut].rpartition(b"@")[2]  # never a user:password passed on as a host
    return (path if path.startswith(b"/") else b"/" + path), authority


class HeadCache:
    """Heads remembered by their exact bytes (request line to blank line), boundedly.

    Only heads of at most max_bytes and max_headers lines are remembered, so a connection
    whose limits are at least those may take a remembered head without checking it again
    (see ClientConnection); one with smaller limits does not use the cache.
    """

    __slots__ = ("heads", "limit", "max_bytes", "max_headers")

    def __init__(self, limit: int = 1024, max_bytes: int = 4096, max_headers: int = 32) -> None:
        self.heads: dict[bytes, Head] = {}
        self.limit = limit
        self.max_bytes = max_bytes
        self.max_headers = max_headers

    def get(self, raw: bytes) -> Head | None:
        return self.heads.get(raw)

    def admits(self, max_head: int, max_headers: int) -> bool:
        """Whether every head it may remember is within these limits."""
        return max_head >= self.max_bytes and max_headers >= self.max_headers

    def remember(self, raw: bytes, head: Head) -> None:
        if (
            len(raw) > self.max_bytes
            or len(head.headers) > self.max_headers
            or not head.rememberable
        ):
            return
        heads = self.heads
        if len(heads) >= self.limit:
            heads.clear()  # a client that varies its heads gets the parser's path, nothing worse
        heads[raw] = head
