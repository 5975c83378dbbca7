"""Who may call `POST /-/hooks/git`: the ways Git servers prove they know the hook's token.

- `Authorization: Bearer <token>` (the scheme in any case, as HTTP has it), or the token in
  `X-Gitops-Nodes-Token`, for scripts and CI jobs;
- `X-Gitlab-Token: <token>`, GitLab's webhook "secret token";
- `X-Hub-Signature-256: sha256=<hex>`, GitHub's and Gitea's: an HMAC-SHA256 of the body
  keyed with the webhook's secret (the same token), so a forge can call the hook directly.

The body is read only for a signature, then hashed as it comes (never held), within
MAX_BODY bytes (GitHub caps its payloads at 25 MB) and BODY_SECONDS: anyone who reaches the
admin port may post it before anything is checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac

from starlette.requests import Request

from gitops_nodes.errors import GitopsNodesError

MAX_BODY = 25 * 2**20
BODY_SECONDS = 10.0
SIGNATURE_HEADER = "x-hub-signature-256"


class HookBodyError(GitopsNodesError):
    """A signed hook whose body could not be read whole: too large, or too slow."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def hook_admits(request: Request, token: str) -> bool:
    """Whether the request proves it knows token (see the module's docstring); raises
    HookBodyError when a signature's body is past MAX_BODY or BODY_SECONDS."""
    expected = token.encode()
    headers = request.headers
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _same(given.strip().encode(), expected):
        return True
    for name in ("x-gitops-nodes-token", "x-gitlab-token"):
        if name in headers and _same(headers[name].strip().encode(), expected):
            return True
    signature = headers.get(SIGNATURE_HEADER, "")
    if not signature.startswith("sha256="):
        return False
    try:
        digest = await asyncio.wait_for(_body_digest(request, expected), BODY_SECONDS)
    except TimeoutError:
        raise HookBodyError(408, f"the body did not arrive within {BODY_SECONDS:g} s") from None
    return _same(signature.removeprefix("sha256=").strip().lower().encode(), digest)


async def _body_digest(request: Request, key: bytes) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise HookBodyError(413, f"the body is over {MAX_BODY // 2**20} MiB")
    mac = hmac.new(key, digestmod=hashlib.sha256)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HookBodyError(413, f"the body is over {MAX_BODY // 2**20} MiB")
        mac.update(chunk)
    return mac.hexdigest().encode()


def _same(given: bytes, expected: bytes) -> bool:
    return bool(given) and hmac.compare_digest(given, expected)
