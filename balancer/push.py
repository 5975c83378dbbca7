"""Tables pushed over the admin port, for a balancer that shares no file system with apply.

On a Swarm the balancer is a service on other hosts: apply sends it each routing table with
`PUT /-/table` and reads its report with `GET /-/ack`, both with `Authorization: Bearer
<token>`. `GET /-/table` gives back the table served, for an apply whose state directory
lost the one it published (a fresh CI runner): it starts from what serves, not from nothing.
A pushed table is parsed whole before it is swapped in (one assignment, as a reloaded file
is), so a malformed one is refused with 400 and the current table keeps serving.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from balancer.bodies import read_bounded
from balancer.routing import Router
from balancer.table import RoutingTable, TableError


class Pushable(Protocol):
    """What the push endpoints need from the running balancer."""

    @property
    def router(self) -> Router: ...
    def swap(self, table: RoutingTable) -> None: ...
    def given_table(self) -> RoutingTable: ...
    def ack_document(self) -> dict[str, Any]: ...


# A table of 1,000 nodes is well under 1 MiB: more is no table, and is not held in memory.
MAX_TABLE_BYTES = 16 * 2**20


def push_routes(balancer: Pushable, token: str) -> list[Route]:
    """`PUT /-/table`, `GET /-/table` and `GET /-/ack`, refusing requests without the token
    (401)."""
    if not token:
        raise ValueError("the push endpoints need a non-empty token")
    expected = f"Bearer {token}".encode()

    def refused(request: Request) -> Response | None:
        given = request.headers.get("authorization", "").encode()
        if hmac.compare_digest(given, expected):
            return None
        return JSONResponse(
            {"error": "unauthorized", "message": "expected Authorization: Bearer <token>"},
            status_code=401,
            headers={"www-authenticate": "Bearer"},
        )

    async def put_table(request: Request) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        body = await read_bounded(request, MAX_TABLE_BYTES)
        if body is None:
            return JSONResponse(
                {
                    "error": "table too large",
                    "message": f"a table is at most {MAX_TABLE_BYTES // 2**20} MiB",
                    "serving": balancer.router.generation,
                },
                status_code=413,
                headers={"connection": "close"},
            )
        try:
            table = RoutingTable.from_json(json.loads(body))
        # JSONDecodeError is a ValueError; RecursionError: nested deeper than json's stack
        except (ValueError, TableError, RecursionError) as exc:
            return JSONResponse(
                {"error": "bad table", "message": str(exc), "serving": balancer.router.generation},
                status_code=400,
            )
        balancer.swap(table)
        return JSONResponse({"generation": table.generation})

    async def get_table(request: Request) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        return JSONResponse(balancer.given_table().to_json())

    async def get_ack(request: Request) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        return JSONResponse(balancer.ack_document())

    return [
        Route("/-/table", put_table, methods=["PUT"]),
        Route("/-/table", get_table, methods=["GET"]),
        Route("/-/ack", get_ack, methods=["GET"]),
    ]
