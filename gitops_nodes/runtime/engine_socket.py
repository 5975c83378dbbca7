"""A read-only Docker Engine API client over the engine's Unix socket, without the Docker SDK.

What a plan with nothing to do asks the engine (is it there, which containers and images the
project has, its name) is three GET requests. Importing the SDK for them costs more than the
requests themselves (about 0.1 s of a command's start-up: the SDK brings requests, urllib3
and charset_normalizer), and a no-op `plan` or `apply` is what CI and `watch` run all day. So
these reads go over the socket with the standard library, and the SDK is loaded only when
something is to be changed (runtime/docker_lazy.py). `watch` follows the engine's events
here too (runtime/docker.py's follow_events), one request a second for as long as it runs,
rather than making and dropping an SDK client each time.

Only a local engine is read this way: DOCKER_HOST unset (the engine's default socket) or a
`unix://` URL, without TLS. For any other engine `socket_from_env` answers None and the SDK
does everything, as it understands every form of DOCKER_HOST.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from gitops_nodes.errors import RuntimeFailure, RuntimeUnavailable

DEFAULT_SOCKET = "/var/run/docker.sock"  # where the SDK and the CLI look without DOCKER_HOST
TIMEOUT = 120.0  # seconds, as the SDK client's (a busy engine lists slowly, never forever)
# What to do when no engine answers, whichever client found out.
START_ENGINE = "start one (as root: scripts/lib/ensure-docker.sh) or set DOCKER_HOST"


def socket_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The engine's socket path when DOCKER_HOST names a local socket without TLS, else None
    (the SDK then reads the engine: TCP, SSH and TLS are its business)."""
    env = os.environ if environ is None else environ
    if env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_CERT_PATH"):
        return None
    host = env.get("DOCKER_HOST") or ""
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        path = host[len("unix://") :]
        # unix://var/run/docker.sock (two slashes) is accepted by the SDK as the same path
        return path if path.startswith("/") else "/" + path
    return None


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket: the engine's API on one host."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class EngineSocket:
    """GET requests to the engine at one Unix socket; a new connection per request (a read
    is rare next to what it costs, and nothing is held open between commands)."""

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def get(self, what: str, endpoint: str, params: Mapping[str, str] | None = None) -> Any:
        """The engine's JSON answer to GET endpoint; what names the read in our errors.

        Raises RuntimeUnavailable when the engine does not answer, RuntimeFailure when it
        answers with an error or with something that is not its JSON."""
        body = self._body(what, endpoint, params)
        try:
            return json.loads(body) if body.strip() else None
        except ValueError as exc:
            raise RuntimeFailure(
                f"{what}: the engine's answer is not JSON ({exc}): {body[:200]!r}"
            ) from exc

    def _body(self, what: str, endpoint: str, params: Mapping[str, str] | None) -> bytes:
        """The body of the engine's answer to GET endpoint, when it is not an error."""
        target = endpoint + ("?" + urlencode(params, quote_via=quote) if params else "")
        try:
            status, body = self._exchange(target)
        except (OSError, http.client.HTTPException) as exc:
            raise RuntimeUnavailable(
                f"{what}: the Docker engine does not answer at {self.path} ({exc})"
            ) from exc
        if status >= 400:
            raise RuntimeFailure(f"{what}: the engine answered {status}: {_message(body)}")
        return body

    def ping(self) -> None:
        """Check that the engine answers (the SDK client's ping, by GET /_ping)."""
        try:
            status, body = self._exchange("/_ping")
        except (OSError, http.client.HTTPException) as exc:
            raise RuntimeUnavailable(
                f"no Docker engine answers at {self.path} ({exc}); {START_ENGINE}"
            ) from exc
        if status != 200:
            raise RuntimeUnavailable(
                f"the Docker engine at {self.path} is not ready: it answered {status}: "
                f"{_message(body)}"
            )

    def _exchange(self, target: str) -> tuple[int, bytes]:
        """One GET on a connection of its own: the answer's status and body."""
        connection = _UnixConnection(self.path, self.timeout)
        try:
            connection.request("GET", target, headers={"Accept": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def containers(self, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        """Every container (running or not) that the filters select, as the engine
        summarises them (GET /containers/json?all=1)."""
        found = self.get(
            "listing containers failed",
            "/containers/json",
            {"all": "1", "filters": json.dumps(dict(filters))},
        )
        return list(found or ())

    def images(self, reference: str) -> list[dict[str, Any]]:
        """The images whose name matches reference (GET /images/json, reference filter)."""
        found = self.get(
            "listing images failed",
            "/images/json",
            {"filters": json.dumps({"reference": [reference]})},
        )
        return list(found or ())

    def events(
        self, since: float, until: float, filters: Mapping[str, list[str]]
    ) -> list[dict[str, Any]]:
        """The engine's events between two times (Unix seconds) that the filters select; the
        engine answers once `until` has passed (GET /events, one JSON object a line)."""
        params = {
            "since": f"{since:.9f}",
            "until": f"{until:.9f}",
            "filters": json.dumps(dict(filters)),
        }
        body = self._body("reading the engine's events failed", "/events", params)
        try:
            return [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError as exc:
            raise RuntimeFailure(f"reading the engine's events failed: not JSON ({exc})") from exc

    def info(self) -> dict[str, Any]:
        """The engine's description of itself (GET /info)."""
        found = self.get("reading the engine's name failed", "/info")
        return found if isinstance(found, dict) else {}


def _message(body: bytes) -> str:
    """The engine's error message from its JSON error body, else the body's start."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip() or "(no message)"
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])
    return body[:200].decode("utf-8", "replace")
