"""`POST /-/hooks/git`'s proofs of the token (gitops_nodes/watch/hooks.py), each as a Git
server sends it, over the ASGI interface the admin port serves it through."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import MutableMapping
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gitops_nodes.watch import hooks
from gitops_nodes.watch.hooks import HookBodyError, hook_admits

TOKEN = "0123456789abcdef0123456789abcdef"
BODY = b'{"ref": "refs/heads/main"}'
SIGNED = "sha256=" + hmac.new(TOKEN.encode(), BODY, hashlib.sha256).hexdigest()


async def endpoint(request: Request) -> Response:
    try:
        admitted = await hook_admits(request, TOKEN)
    except HookBodyError as exc:
        return JSONResponse({"error": str(exc)}, exc.status)
    return JSONResponse({}, 202 if admitted else 401)


APP = Starlette(routes=[Route("/-/hooks/git", endpoint, methods=["POST"])])


def post(headers: dict[str, str], chunks: list[bytes] | None = None, stall: bool = False) -> int:
    """The status the hook answers; chunks are the body as it arrives (stall: then nothing)."""
    scope = {
        "type": "http", "method": "POST", "path": "/-/hooks/git", "root_path": "",
        "query_string": b"", "scheme": "http", "server": ("127.0.0.1", 8081),
        "http_version": "1.1",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip
    pending = list(chunks if chunks is not None else [BODY])
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or stall}
        await asyncio.Event().wait()  # a client that sends nothing more
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(APP(scope, receive, send))
    return int(sent[0]["status"])


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {TOKEN}"},
        {"authorization": f"bearer {TOKEN}"},  # was 401: the scheme is case-insensitive
        {"x-gitops-nodes-token": TOKEN},
        {"x-gitlab-token": TOKEN},  # GitLab's secret token (was 401)
        {"x-hub-signature-256": SIGNED},  # GitHub's and Gitea's signature (was 401)
        {"authorization": "Bearer wrong", "x-hub-signature-256": SIGNED},
    ],
    ids=["bearer", "lower-case scheme", "own header", "gitlab", "github", "a wrong one beside"],
)
def test_each_way_a_git_server_proves_the_token_is_taken(headers: dict[str, str]) -> None:
    assert post(headers) == 202


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": TOKEN},  # no scheme: was taken
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": "Bearer "},
        {"x-gitlab-token": "wrong"},
        {"x-hub-signature-256": SIGNED.replace("sha256=", "sha1=")},
        {"x-hub-signature-256": SIGNED[:-1] + ("0" if SIGNED[-1] != "0" else "1")},
        {"x-hub-signature-256": "sha256="},
    ],
    ids=["none", "no scheme", "basic", "empty", "wrong gitlab", "sha1", "one digit off", "empty"],
)
def test_anything_else_is_refused(headers: dict[str, str]) -> None:
    assert post(headers) == 401


def test_a_signature_over_another_body_is_refused() -> None:
    assert post({"x-hub-signature-256": SIGNED}, [BODY + b" "]) == 401
    assert post({"x-hub-signature-256": SIGNED}, [BODY[:5], BODY[5:]]) == 202  # in pieces


def test_a_signed_body_too_large_or_too_slow_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks, "MAX_BODY", 16)
    monkeypatch.setattr(hooks, "BODY_SECONDS", 0.2)
    assert post({"x-hub-signature-256": SIGNED, "content-length": "17"}, [b""]) == 413
    assert post({"x-hub-signature-256": SIGNED}, [b"x" * 10, b"x" * 10]) == 413  # chunked
    assert post({"x-hub-signature-256": SIGNED}, [b"x"], stall=True) == 408
