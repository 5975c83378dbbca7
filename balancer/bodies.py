"""Request bodies the admin port reads whole, read no further than a limit: anyone who reaches
the port may send one before a key or token is checked (the login form) or before its size is
(a pushed table), so what is held stays bounded whatever is declared or sent."""

from __future__ import annotations

from starlette.requests import Request


async def read_bounded(request: Request, limit: int) -> bytes | None:
    """The request's body, or None past limit bytes (by its content-length, or as it comes)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
