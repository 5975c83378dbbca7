"""Answers from behind a prefix route: `Location` and cookie paths put under the prefix.

An instance reached as `/nodes/<n>/...` or `/aliases/<a>/...` sees paths without that prefix,
so its redirects (`Location: /next`) and cookies (`Path=/`) point outside it: the client's
next request misses the route. With a node's or alias's `prefixRewrite: true` the balancer
rewrites, in the response head:

- `Location` (and `Content-Location`): an absolute path (`/next`), or an absolute URL (also
  scheme-relative `//host/next`) whose authority is the request's `Host`, gets the prefix
  before its path; a relative reference (`next`, `../x`) already resolves under it; other
  hosts are left alone.
- `Set-Cookie`'s `Path` attribute: `/` becomes the prefix, `/x` prefix + `/x`; a cookie
  without one already defaults to a path under the prefix.

What is already under the prefix (an instance that honours `X-Forwarded-Prefix`) is left as
it is. Only the balancer's own prefix is added: a trusted proxy in front rewrites for its own.
Heads repeat, so rewritten heads are remembered (boundedly) by (head, prefix, host): a head
is rewritten once, like the rest of the response head (balancer/http.py's fast_head).
"""

from __future__ import annotations

import re

_LOCATION = re.compile(rb"(\r\n(?:content-)?location[ \t]*:[ \t]*)([^\r\n]*)", re.IGNORECASE)
_SET_COOKIE = re.compile(rb"(\r\nset-cookie[ \t]*:[ \t]*)([^\r\n]*)", re.IGNORECASE)
_COOKIE_PATH = re.compile(rb"(;[ \t]*path[ \t]*=[ \t]*)([^;]*)", re.IGNORECASE)
_URL = re.compile(rb"((?:[A-Za-z][A-Za-z0-9+.\-]*:)?//)([^/?#]*)(.*)", re.DOTALL)

_HEADS: dict[tuple[bytes, bytes, bytes], bytes] = {}
_HEADS_LIMIT = 1024


def under_prefix(block: bytes, prefix: bytes, host: bytes) -> bytes:
    """A response head block (status line and header lines joined by CRLF, no blank line)
    with its Location and cookie paths put under prefix; host: the request's Host."""
    key = (block, prefix, host)
    found = _HEADS.get(key)
    if found is None:
        found = _rewrite(block, prefix, host)
        if len(_HEADS) >= _HEADS_LIMIT:
            _HEADS.clear()
        _HEADS[key] = found
    return found


def _rewrite(block: bytes, prefix: bytes, host: bytes) -> bytes:
    lower = block.lower()
    if b"location" not in lower and b"set-cookie" not in lower:
        return block
    block = _LOCATION.sub(lambda m: m[1] + location(m[2], prefix, host), block)
    return _SET_COOKIE.sub(lambda m: m[1] + cookie(m[2], prefix), block)


def location(value: bytes, prefix: bytes, host: bytes) -> bytes:
    """A Location value put under prefix, when it points at this host outside it."""
    stripped = value.strip()
    if stripped.startswith(b"/") and not stripped.startswith(b"//"):
        return _path_under(stripped, prefix)
    found = _URL.fullmatch(stripped)
    if found is None or not host or found[2].lower() != host.lower():
        return value  # relative (already under the prefix), or another host
    rest = found[3] if found[3].startswith(b"/") else b"/" + found[3]
    return found[1] + found[2] + _path_under(rest, prefix)


def cookie(value: bytes, prefix: bytes) -> bytes:
    """A Set-Cookie value whose Path attribute is put under prefix."""

    def path(found: re.Match[bytes]) -> bytes:
        given = found[2].strip()
        if not given.startswith(b"/"):
            return found[0]  # not a path: the client ignores it and uses the default
        under = prefix if given == b"/" else _path_under(given, prefix)
        return found[1] + under

    return _COOKIE_PATH.sub(path, value)


def _path_under(path: bytes, prefix: bytes) -> bytes:
    """path (starting with /) with prefix before it, unless it is under prefix already."""
    if path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] in (b"", b"/", b"?", b"#"):
        return path
    return prefix + path
