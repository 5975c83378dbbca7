"""HTTP/1.1 pieces the data plane shares: limits, hop-by-hop headers, local answers, targets.

Pure functions over bytes; the Protocols in client.py and upstream.py use them.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import NamedTuple

MAX_BODY = 16 * 2**20
# A request head's limits: nginx refuses past 4 x 8 KiB buffers by default, HAProxy past its
# 16 KiB buffer; 32 KiB is room for any real client's cookies and tokens.
MAX_HEAD = 32 * 1024  # request line and header lines, bytes
MAX_HEADERS = 100  # header lines (Apache's LimitRequestFields)
MAX_RESPONSE_HEAD = 64 * 1024  # an instance's status line and header lines, bytes: past it 502
MAX_CLIENTS = 10_000  # open client connections per worker process
MAX_PIPELINED = 100  # requests waiting behind the one being answered, per connection
LINGER = 5.0  # seconds a closing connection reads and discards what the client still sends
HOLD_LIMIT = 256 * 1024  # body bytes held while connecting before the client is paused
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# The name of the caller whose key a private target admitted, as its instances see it.
CALLER_HEADER = b"x-gitops-nodes-caller"
# Set by the balancer itself: dropped from the client's request and written afresh
# (the caller only on private targets: no client may claim to be one).
REWRITTEN = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"forwarded",
        b"x-request-id",
        b"expect",
        b"content-length",
        CALLER_HEADER,
    }
)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
# The reason phrases of the statuses the balancer answers itself (RFC 9110's; 413 keeps its
# older name, which clients read in error_name). Others (an execute call passes an instance's
# status on) take the standard phrase from reason_phrase().
REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
EXECUTE_PREFIX = b"/datasphere/"  # the execute API's paths (balancer/execute.py)
ALIAS_PREFIX = "datasphere.user."  # the reference's form of an alias in x-node-alias


def authority(host: str, port: int) -> str:
    """host:port as a URL or a Host header writes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def versionless(data: bytes) -> bool:
    """Whether data, a read that began a request, has a whole request line without an HTTP
    version (HTTP/0.9's `GET /`): such a client sends no header lines, and would otherwise be
    held until the header timeout, waiting for the end of a head it never sends."""
    line, newline, _ = data.lstrip(b"\r\n").partition(b"\n")
    return bool(newline) and len(line.split()) == 2


NO_VERSION = "a request line without an HTTP version (HTTP/0.9) is not served here: send HTTP/1.1"


def error_body(code: int, message: str, request_id: bytes, **extra: str) -> bytes:
    """The balancer's JSON error. It also carries the reference platform's error fields
    (error_name, error_message), so its clients read the balancer's errors like a node's."""
    payload = {
        "error": message,
        "status": code,
        "requestId": request_id.decode(),
        "error_name": REASONS.get(code, b"Error").decode().replace(" ", ""),
        "error_message": message,
        **extra,
    }
    return json.dumps(payload).encode()


def reason_phrase(code: int) -> bytes:
    """The standard reason phrase of a status code (never the phrase of another status)."""
    phrase = REASONS.get(code)
    if phrase is None:
        try:
            phrase = HTTPStatus(code).phrase.encode()
        except ValueError:  # a code no standard names
            phrase = b"Status %d" % code
    return phrase


def local_response(
    code: int, body: bytes, request_id: bytes, close: bool, extra_head: bytes = b""
) -> bytes:
    """A complete response the balancer answers itself; extra_head: more header lines, each
    ending in CRLF."""
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"x-request-id: %s\r\n%s" % (code, reason_phrase(code), len(body), request_id, extra_head)
    )
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" + body


PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b""})
_HOP_NAMES = b"|".join(sorted(HOP_BY_HOP | {b"x-request-id"}))
HOP_SEARCH = re.compile(rb"\r\n(?:" + _HOP_NAMES + rb")[ \t]*:")
_HOP_LINES = re.compile(rb"\r\n(?:" + _HOP_NAMES + rb")[ \t]*:[^\r\n]*", re.IGNORECASE)
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*(?:\r|$)")
_CONNECTION_VALUE = re.compile(rb"\r\nconnection[ \t]*:([^\r\n]*)")


def strip_hop_by_hop(block: bytes, lower: bytes) -> bytes:
    """A response head block without its hop-by-hop header lines (and x-request-id, which
    the balancer sets), including the headers its Connection header names."""
    named = _CONNECTION_VALUE.search(lower)
    block = _HOP_LINES.sub(b"", block)
    if named is None:
        return block
    value = named.group(1).strip()
    if value in PLAIN_CONNECTION:  # "keep-alive", the usual case
        return block
    tokens = {t.strip() for t in value.split(b",")} - PLAIN_CONNECTION
    if not tokens:
        return block
    lines = block.split(b"\r\n")
    kept = [lines[0]] + [
        line for line in lines[1:] if line.split(b":", 1)[0].strip().lower() not in tokens
    ]
    return b"\r\n".join(kept)


class FastHead(NamedTuple):
    """What the response fast path needs from a head block, worked out once per distinct block."""

    head: bytes  # the block without hop-by-hop lines (and x-request-id, which we set)
    length: int  # its content-length
    code: int
    keep_alive: bool  # the instance keeps the connection open after it


_FAST_HEADS: dict[bytes, FastHead | None] = {}
# 256, not more: an instance's heads differ in their Date line, a new one every second, so a
# larger memo only takes longer to fill (and the process's RSS longer to level off) while
# every head still hits for the rest of its second.
_FAST_HEADS_LIMIT = 256
# Longer heads (and targets) are worked out every time: the memos' size stays within
# limit × this many bytes of keys, whatever instances and clients send.
MEMO_MAX_BYTES = 4096
_UNSEEN = FastHead(b"", -1, 0, False)


def fast_head(block: bytes) -> FastHead | None:
    """A 2xx HTTP/1.1 response head with a content-length and no transfer-encoding, rewritten
    for the client; None for any other head (those take the parser's path).

    An instance answers with the same head bytes over and over (they differ in the Date line,
    once a second), so answers are remembered, boundedly: one dict lookup instead of
    lowercasing and searching every head.
    """
    found = _FAST_HEADS.get(block, _UNSEEN)
    if found is _UNSEEN:
        found = _fast_head(block)
        if len(block) > MEMO_MAX_BYTES:
            return found
        if len(_FAST_HEADS) >= _FAST_HEADS_LIMIT:
            _FAST_HEADS.clear()
        _FAST_HEADS[block] = found
    return found


def _fast_head(block: bytes) -> FastHead | None:
    lower = block.lower()
    found = CONTENT_LENGTH.search(lower)
    if (
        found is None
        or not block.startswith(b"HTTP/1.1 2")  # other codes take the parser's path
        or b"\r\ntransfer-encoding:" in lower
    ):
        return None
    keep_alive = b"\r\nconnection: close" not in lower
    if HOP_SEARCH.search(lower) is not None:
        block = strip_hop_by_hop(block, lower)
    return FastHead(block, int(found.group(1)), int(block[9:12]), keep_alive)


def without_connection_tokens(lines: list[bytes], connection: bytes) -> list[bytes]:
    """Drop the header lines that the Connection header names: they are hop-by-hop too."""
    tokens = {token.strip().lower() for token in connection.split(b",")} - PLAIN_CONNECTION
    if not tokens:
        return lines
    return [line for line in lines if line.split(b":", 1)[0].strip().lower() not in tokens]


_TARGETS: dict[bytes, tuple[bytes, str | None, str | None]] = {}
_TARGETS_LIMIT = 4096


def split_target(target: bytes) -> tuple[bytes, str | None, str | None]:
    """(path to forward, alias, node) from /aliases/<alias>/<path> or /nodes/<node>/<path>.

    Clients call the same few URLs over and over, so answers are remembered (boundedly).
    """
    found = _TARGETS.get(target)
    if found is None:
        found = _split_target(target)
        if len(target) > MEMO_MAX_BYTES:
            return found
        if len(_TARGETS) >= _TARGETS_LIMIT:
            _TARGETS.clear()
        _TARGETS[target] = found
    return found


def _split_target(target: bytes) -> tuple[bytes, str | None, str | None]:
    if target.startswith(b"/aliases/"):
        rest = target[9:]
        kind = "alias"
    elif target.startswith(b"/nodes/"):
        rest = target[7:]
        kind = "node"
    else:
        return target, None, None
    cut = len(rest)
    for mark in (b"/", b"?"):
        position = rest.find(mark)
        if 0 <= position < cut:
            cut = position
    name = rest[:cut].decode("latin-1")
    path = rest[cut:]
    if not path.startswith(b"/"):
        path = b"/" + path
    return path, (name if kind == "alias" else None), (name if kind == "node" else None)
