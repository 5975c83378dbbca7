"""The web console on the admin port: a page built on `/-/status`, its login and its actions.

The page (static/ in this package: HTML, CSS and JavaScript, no build step, nothing fetched
from elsewhere) reads `/-/status` and follows `/-/status/stream`; it adds no data of its own.
This module serves those files and guards them:

- with an admin key (required beyond loopback), a browser logs in once with a form: the key
  is checked and a random session id goes into an HttpOnly, SameSite=Strict cookie, which the
  control plane then accepts in place of the key (the key itself never travels again);
- every action is a POST that needs the CSRF token `/-/ui/session` hands the page (an HMAC of
  the session under a per-process secret), or the admin key in a header (which no other site
  can make a browser send), and a same-origin `Origin` when the browser sends one;
- every answer of the control plane carries a strict Content-Security-Policy (`SecurityHeaders`).

The actions themselves ("reconcile now", "roll back this rollout") belong to whoever embeds
the balancer (the watch loop) and are registered in `Console.actions`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from balancer.access import AdminGuard
from balancer.bodies import read_bounded

COOKIE = "gitops_nodes_console"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600.0
MAX_SESSIONS = 256  # the oldest session is forgotten past this many
MAX_LOGIN_BODY = 8192
LOGIN_BODY_SECONDS = 10.0  # for the login form's body to arrive whole
UI = "/-/ui"
# Paths a browser may fetch without the key: the login form and the page's static files
# (the form's path exactly: a route added later under a longer name is not opened by it).
OPEN_PATHS = frozenset({f"{UI}/login"})
OPEN_PREFIXES = (f"{UI}/static/",)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    # Not no-referrer: browsers then send `Origin: null` on the page's own POSTs, which the
    # same-origin check must refuse. same-origin sends nothing to other sites.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

Action = Callable[[], Awaitable[dict[str, Any]]]


def _assets() -> dict[str, bytes]:
    """The page's files, read once from the package."""
    folder = resources.files(__package__).joinpath("static")
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(ext) for ext in _TYPES)
    }


class Console:
    """The console's sessions, its CSRF secret and the actions the embedder offers."""

    def __init__(self) -> None:
        self.secret = secrets.token_bytes(32)  # per process: a restart ends every session
        self.sessions: OrderedDict[str, float] = OrderedDict()  # id -> expiry (time.time())
        self.actions: dict[str, Action] = {}
        self._assets: dict[str, bytes] | None = None

    # -- sessions and CSRF ------------------------------------------------------------------

    def open_session(self) -> str:
        session = secrets.token_urlsafe(32)
        self.sessions[session] = time.time() + SESSION_SECONDS
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return session

    def session_of(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The live session a request's cookie names, if any."""
        for name, value in headers:
            if name != b"cookie":
                continue
            for part in value.decode("latin-1").split(";"):
                key, _, given = part.strip().partition("=")
                if key != COOKIE:
                    continue
                expiry = self.sessions.get(given)
                if expiry is None:
                    continue
                if expiry < time.time():
                    self.sessions.pop(given, None)
                    continue
                return given
        return None

    def csrf_token(self, session: str | None) -> str:
        """The token the page sends back with every action: bound to its session (or, with no
        login on loopback, to this process)."""
        bound = session or "loopback"
        return hmac.new(self.secret, bound.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, request: Request, admin: AdminGuard | None) -> bool:
        """Whether an action request may run: same origin, and the CSRF token of its session
        or the admin key in a header."""
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return False
        if admin is not None and admin.admits(request.scope["headers"]):
            return True
        given = request.headers.get(CSRF_HEADER, "")
        expected = self.csrf_token(self.session_of(request.scope["headers"]))
        return hmac.compare_digest(given.encode(), expected.encode())

    # -- routes -------------------------------------------------------------------------------

    def asset(self, name: str) -> bytes | None:
        if self._assets is None:
            self._assets = _assets()
        return self._assets.get(name)

    def routes(self, admin: AdminGuard | None) -> list[BaseRoute]:
        """The console's routes, guarded by admin (None: loopback without a key)."""

        async def root(request: Request) -> Response:
            return RedirectResponse(f"{UI}/", status_code=303)

        async def page(request: Request) -> Response:
            return self._file("index.html")

        async def static(request: Request) -> Response:
            return self._file(request.path_params["name"])

        async def login_form(request: Request) -> Response:
            if admin is None:
                return RedirectResponse(f"{UI}/", status_code=303)
            return self._login_page(None)

        async def login(request: Request) -> Response:
            if admin is None:
                return RedirectResponse(f"{UI}/", status_code=303)
            origin = request.headers.get("origin")
            if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
                return self._login_page("This form must be sent from the console itself.", 403)
            try:
                # Bounded in time as in size: anyone who reaches the port may post it, and a
                # body that never comes held its connection (and a share of the port) forever.
                body = await asyncio.wait_for(
                    read_bounded(request, MAX_LOGIN_BODY), LOGIN_BODY_SECONDS
                )
            except TimeoutError:
                late = f"The form did not arrive within {LOGIN_BODY_SECONDS:g} s."
                return self._login_page(late, 408, close=True)
            except ClientDisconnect:  # gone: nobody reads an answer, and it is no fault here
                return Response(status_code=400, headers={"connection": "close"})
            if body is None:
                return self._login_page(
                    f"The form is larger than {MAX_LOGIN_BODY} bytes: send only the key.", 413
                )
            fields = parse_qs(body.decode("utf-8", "replace"))
            key = (fields.get("key") or [""])[0].strip()
            if not key or not admin.admits([(b"x-api-key", key.encode())]):
                return self._login_page("That is not the admin key.", 401)
            response = RedirectResponse(f"{UI}/", status_code=303)
            response.set_cookie(
                COOKIE,
                self.open_session(),
                max_age=int(SESSION_SECONDS),
                path="/",
                httponly=True,
                samesite="strict",
            )
            return response

        async def logout(request: Request) -> Response:
            if not self.csrf_ok(request, admin):
                return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
            session = self.session_of(request.scope["headers"])
            if session is not None:
                self.sessions.pop(session, None)
            response = JSONResponse({"loggedOut": True})
            response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
            return response

        async def session(request: Request) -> Response:
            current = self.session_of(request.scope["headers"])
            return JSONResponse(
                {
                    "csrf": self.csrf_token(current),
                    "login": admin is not None,
                    "actions": sorted(self.actions),
                },
                headers={"cache-control": "no-store"},
            )

        async def action(request: Request) -> Response:
            name = request.path_params["name"]
            run = self.actions.get(name)
            if run is None:
                known = ", ".join(sorted(self.actions)) or "none here"
                return JSONResponse(
                    {"error": f"no action {name!r}; actions: {known}"}, status_code=404
                )
            if not self.csrf_ok(request, admin):
                return JSONResponse(
                    {"error": f"missing or wrong CSRF token: send {CSRF_HEADER} as the page does"},
                    status_code=403,
                )
            return JSONResponse(await run(), status_code=202)

        return [
            Route("/", root, methods=["GET"]),
            Route(UI, page, methods=["GET"]),
            Route(f"{UI}/", page, methods=["GET"]),
            Route(f"{UI}/static/{{name}}", static, methods=["GET"]),
            Route(f"{UI}/login", login_form, methods=["GET"]),
            Route(f"{UI}/login", login, methods=["POST"]),
            Route(f"{UI}/logout", logout, methods=["POST"]),
            Route(f"{UI}/session", session, methods=["GET"]),
            Route("/-/actions/{name}", action, methods=["POST"]),
        ]

    def _file(self, name: str) -> Response:
        data = self.asset(name)
        kind = next((t for ext, t in _TYPES.items() if name.endswith(ext)), None)
        if data is None or kind is None:
            return JSONResponse({"error": f"no such file: {name}"}, status_code=404)
        return Response(data, media_type=kind, headers={"cache-control": "no-cache"})

    def _login_page(self, message: str | None, status: int = 200, close: bool = False) -> Response:
        template = (self.asset("login.html") or b"").decode()
        shown = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
        headers = {"connection": "close"} if close else None  # what is left unread is dropped
        page = template.replace("<!--message-->", shown)
        return HTMLResponse(page, status_code=status, headers=headers)


def wants_page(scope: Scope) -> bool:
    """A browser asking for the console's page (sent to the login form rather than a 401)."""
    return scope.get("method") == "GET" and scope["path"] in ("/", UI, f"{UI}/")


def is_open(path: str) -> bool:
    """Whether a browser may fetch path without the key (see OPEN_PATHS)."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class SecurityHeaders:
    """ASGI middleware: a strict Content-Security-Policy and friends on every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)
