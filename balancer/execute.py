"""The reference platform's execute API, served by the data plane:

    POST /datasphere/v1/nodes/<node>:execute     {"folder_id", "node_id", "input": {...}}
    POST /datasphere/v1/aliases/<alias>:execute  {"folder_id", "alias_name", "input": {...}}

The mapping onto a node's own API (flat JSON of inputs in, flat JSON of outputs out):
- Request. The body (at most the body limit, 16 MB; read whole: these are small JSON calls)
  must be a JSON object. `input` (an object; absent or null means `{}`) becomes the body of
  `POST /` on an instance of the node, or of one of the alias's nodes, picked, retried and
  forwarded like any other request, through the same upstream pool (the client's headers go
  along, rewritten by balancer/forwarding.py as on the proxy path, but for its
  content-type, which is application/json, and no X-Forwarded-Prefix of its own: its URL is
  no prefix of the node's paths). `node_id` / `alias_name`,
  when given, must name the URL's target; `folder_id`, when given, must agree with the header
  x-folder-id and is recorded on the request. The REST spellings (folderId, nodeId,
  aliasName) are accepted too; any other field is refused, as the reference refuses unknown
  fields. An alias may be written `datasphere.user.<alias>` wherever it is named.
- Response. An instance's 2xx answer that is a JSON object `{...}` becomes 200
  `{"output": {...}}`. A 4xx/5xx answer that is a JSON object (a python node's
  `{"error_name", "error_message"[, "traceback"]}`) is passed through with its status.
  Anything else, and every failure of the balancer's own (400 bad call, 404 unknown target,
  405 not POST, 413 too large, 502/503/504), answers the balancer's JSON error, which carries
  `error_name` and `error_message` as well.

How it rides the data plane without costing the proxy path anything: the ClientConnection
hands a request here only when its path starts with /datasphere/. The ExecuteCall then
stands between the two Protocols. To the ClientConnection it is the request's Upstream
(on_body gives it the body, on_message_complete says the body is whole); the request has no
route of its own, so start() finds no instance for it and hands it back here (no_instance).
To the UpstreamConnection it is the Downstream of an inner request, `POST /` with the
input: the instance's answer is written into a buffer instead of to the client, and done()
rewrites it whole.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

import httptools

from balancer.access import CHALLENGE_LINE, Denial, presented_key
from balancer.backends import Backend
from balancer.forwarding import forward
from balancer.head import Head
from balancer.http import ALIAS_PREFIX, local_response
from balancer.routing import AliasRoute, NodeRoute, Router
from balancer.types import Client, Request

JSON_TYPE = b"content-type: application/json\r\n"
ROUTE = re.compile(r"/datasphere/v1/(nodes|aliases)/([^/]+):execute")
USAGE = "POST /datasphere/v1/nodes/<node>:execute or POST /datasphere/v1/aliases/<alias>:execute"
# The body's fields, by the key a client may use (gRPC/JSON and REST spellings) -> its name.
_COMMON = {"folder_id": "folder_id", "folderId": "folder_id", "input": "input"}
FIELDS = {
    "node": {**_COMMON, "node_id": "node_id", "nodeId": "node_id"},
    "alias": {**_COMMON, "alias_name": "alias_name", "aliasName": "alias_name"},
}
TARGET_FIELD = {"node": "node_id", "alias": "alias_name"}


class CallError(ValueError):
    """An execute call's body that cannot be sent on; `field` names the culprit, if one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def unprefixed(alias: str) -> str:
    """An alias as the table names it: the reference's `datasphere.user.<alias>` unwrapped."""
    return alias[len(ALIAS_PREFIX) :] if alias.startswith(ALIAS_PREFIX) else alias


def read_call(
    body: bytes, kind: str, name: str, folder_header: str | None
) -> tuple[bytes, str | None]:
    """(the JSON of `input` to send to the node, the folder id) from an execute call's body.

    Raises CallError naming the field that is wrong and what was expected.
    """
    target_field = TARGET_FIELD[kind]
    shape = f'{{"folder_id": ..., "{target_field}": ..., "input": {{...}}}}'
    if not body.strip():
        raise CallError(f"the request body is empty: send a JSON object {shape}")
    try:
        document = json.loads(body, parse_constant=_not_a_number, parse_float=_finite)
    except NonFinite as exc:
        raise CallError(f"the request body has {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise CallError(f"the request body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise CallError(f"the request body must be a JSON object {shape}, got {_kind(document)}")
    fields = FIELDS[kind]
    given: dict[str, tuple[str, Any]] = {}  # field name -> (the key used, its value)
    for key, value in document.items():
        field = fields.get(key)
        if field is None:
            expected = ", ".join(sorted(set(fields.values())))
            raise CallError(f"unknown field {key!r} (the fields are: {expected})", key)
        if field in given:
            raise CallError(f"{given[field][0]!r} and {key!r} are the same field: give one", key)
        given[field] = (key, value)

    key, inputs = given.get("input", ("input", None))
    if inputs is None:
        inputs = {}  # a node without inputs; the reference treats a missing message as empty
    elif not isinstance(inputs, dict):
        raise CallError(
            f"field {key!r} must be a JSON object of the node's input variables, "
            f"got {_kind(inputs)}",
            key,
        )

    if target_field in given:
        key, named = given[target_field]
        if not isinstance(named, str):
            raise CallError(f"field {key!r} must be a string, got {_kind(named)}", key)
        if (unprefixed(named) if kind == "alias" else named) != name:
            raise CallError(f"field {key!r} is {named!r} but the URL executes {kind} {name!r}", key)

    folder = folder_header
    if "folder_id" in given:
        key, folder_id = given["folder_id"]
        if not isinstance(folder_id, str):
            raise CallError(f"field {key!r} must be a string, got {_kind(folder_id)}", key)
        if folder_header is not None and folder_id != folder_header:
            raise CallError(
                f"field {key!r} is {folder_id!r} but the header x-folder-id is {folder_header!r}",
                key,
            )
        folder = folder_id
    return json.dumps(inputs, ensure_ascii=False, separators=(",", ":")).encode(), folder


def begin_execute(client: Client, request: Request, router: Router, head: Head) -> None:
    """Route an execute call from its head: answer 404/405/400 at once, or make it an
    ExecuteCall that waits for its body."""
    path = request.target.partition(b"?")[0].decode("latin-1")
    found = ROUTE.fullmatch(unquote(path))
    if found is None:
        return client.answer(request, 404, f"no such endpoint {path!r}: the execute API is {USAGE}")
    kind = "node" if found[1] == "nodes" else "alias"
    name = unprefixed(found[2]) if kind == "alias" else found[2]
    if request.method != b"POST":
        client.answer(
            request,
            405,
            f"{request.method.decode('latin-1')} is not allowed on {path!r}: the execute API "
            "takes POST",
        )
        if request.local is not None:
            request.local = request.local.replace(b"\r\n", b"\r\nallow: POST\r\n", 1)
        return None
    for header, value, value_kind in (
        ("x-node-alias", head.alias, "alias"),
        ("x-node-id", head.node, "node"),
    ):
        if value is None:
            continue
        named = unprefixed(value) if value_kind == "alias" else value
        if value_kind != kind or named != name:
            return client.answer(
                request,
                400,
                f"the header {header} names {value_kind} {named!r} but the URL executes "
                f"{kind} {name!r}: drop the header or make them agree",
                extra={"field": header},
            )
    route: AliasRoute | NodeRoute | None = (
        router.aliases.get(name) if kind == "alias" else router.nodes.get(name)
    )
    if route is None:
        return client.answer(request, 404, f"no {kind} {name!r}", extra={kind: name})
    guard = route.access
    if guard is not None and presented_key(head.headers) is None:
        # A private target: no key at all is refused before the body is read; the key itself
        # is checked once the body's folder_id is known (dispatch).
        client.answer(request, 401, guard.missing.message, extra={kind: name}, head=CHALLENGE_LINE)
        return None
    request.upstream = ExecuteCall(client, request, route, kind, name, head)
    request.chunked = False  # the body comes to the call as it is, never re-framed
    return None


class Buffer:
    """Where the instance's answer to an execute call is written, to be rewritten whole."""

    __slots__ = ("call", "limit", "parts", "size")

    def __init__(self, call: ExecuteCall, limit: int) -> None:
        self.call = call
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        if self.size > self.limit:
            return  # over the limit already: the call is being failed
        self.size += len(data)
        self.parts.append(data)
        if self.size > self.limit:
            self.parts = []
            # Not from inside the UpstreamConnection's callback that is writing: it still
            # has its own bookkeeping to finish for this read.
            self.call.client.proxy.loop.call_soon(self.call.answer_too_large)


class _Answer:
    """httptools callbacks collecting a buffered answer's body."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)


class ExecuteCall:
    """One execute call: its body is read whole, `input` goes to an instance as an inner
    `POST /`, and the instance's answer is rewritten into the execute API's."""

    __slots__ = (
        "active",
        "body",
        "client",
        "complete",
        "finished",
        "gone",
        "head",
        "inner",
        "kind",
        "name",
        "outer",
        "response_started",
        "route",
        "sending",
        "transport",
    )

    def __init__(
        self,
        client: Client,
        outer: Request,
        route: AliasRoute | NodeRoute,
        kind: str,
        name: str,
        head: Head,
    ) -> None:
        self.client = client
        self.outer = outer
        self.route = route
        self.kind = kind
        self.name = name
        self.head = head  # the call's own: the inner request's headers come from it
        self.body: list[bytes] = []
        self.active = False  # start() reached it: it is the client's request being answered
        self.complete = False  # its body is whole
        self.finished = False  # its answer is written (or it was dropped)
        self.gone = False  # dropped: the client left, or its body was too large
        self.inner: Request | None = None
        # Upstream, towards the ClientConnection.
        self.sending: Request | None = outer
        self.response_started = False  # the answer is written in one go, never in part
        # Downstream, towards the UpstreamConnection.
        self.transport = Buffer(self, client.proxy.settings.max_body)

    # -- Upstream: the ClientConnection hands over the call's body --------------------------

    def write(self, data: bytes) -> None:
        self.body.append(data)  # bounded: the client connection refuses bodies over the limit

    def request_sent(self) -> None:
        self.sending = None
        self.complete = True
        if self.active:
            self.dispatch()

    def abort_exchange(self, client_gone: bool) -> None:
        self.gone = True
        self.finished = True
        self.body = []
        inner, self.inner = self.inner, None
        if inner is not None and inner.upstream is not None:
            inner.upstream.abort_exchange(client_gone)

    def pause_reading(self) -> None:
        pass  # the answer is buffered here (bounded by the limit), not streamed

    def resume_reading(self) -> None:
        pass

    # -- the call itself ---------------------------------------------------------------------

    def activate(self) -> None:
        """start() reached the call: once its body is whole, it is sent on."""
        self.active = True
        outer = self.outer
        if isinstance(self.route, AliasRoute):  # counted in metrics and logs like any request
            outer.alias = self.route
        else:
            outer.node = self.route
        if self.complete:
            self.dispatch()

    def dispatch(self) -> None:
        """Check the body, and send its input to an instance picked like any request's."""
        outer = self.outer
        body = b"".join(self.body)
        self.body = []
        try:
            inputs, folder = read_call(body, self.kind, self.name, outer.folder_id)
        except CallError as exc:
            self.finished = True
            extra = {"field": exc.field} if exc.field else None
            self.client.answer(outer, 400, str(exc), extra=extra)
            self.client.finish_local(outer)
            return
        outer.folder_id = folder
        route = self.route
        decided = forward(
            self.head,
            self.client.hop,
            route.access,
            route.affinity_header if isinstance(route, AliasRoute) else None,
            b"",  # the execute API's URL is no prefix of the node's paths
            folder,
            JSON_TYPE,
        )
        if isinstance(decided, Denial):
            self.finished = True
            challenge = CHALLENGE_LINE if decided.status == 401 else b""
            self.client.answer(
                outer, decided.status, decided.message, extra={self.kind: self.name},
                head=challenge,
            )  # fmt: skip
            self.client.finish_local(outer)
            return
        outer.caller = decided.caller
        inner = Request(b"POST", b"/", "1.1", outer.started)
        inner.request_id = outer.request_id
        inner.caller = outer.caller
        inner.head = b"POST / HTTP/1.1\r\n%scontent-length: %d\r\nx-request-id: %s\r\n\r\n" % (
            decided.lines,
            len(inputs),
            outer.request_id,
        )
        inner.held = [inputs]
        inner.held_size = inner.received = len(inputs)
        inner.complete = True
        inner.folder_id = folder
        inner.affinity_key = decided.affinity_key
        inner.client = self
        if isinstance(self.route, AliasRoute):
            inner.alias = self.route
        else:
            inner.node = self.route
        self.inner = inner
        backend = self.client.pick(inner)
        if backend is None:
            self.fail(503, f"no Healthy instance serves {self.kind} {self.name!r}")
            return
        self.client.send_to(inner, backend)

    def fail(self, code: int, message: str) -> None:
        """Answer the call with the balancer's JSON error (the inner exchange is over)."""
        if self.finished:
            return
        self.finished = True
        inner, self.inner = self.inner, None
        outer = self.outer
        if inner is not None:
            outer.node = inner.node
            outer.backend = inner.backend
        self.client.respond_failure(outer, code, message)

    def answer_too_large(self) -> None:
        """The instance's answer grew past the limit: drop its exchange, answer 502."""
        inner = self.inner
        if self.finished or inner is None:
            return
        if inner.upstream is not None:
            inner.upstream.abort_exchange(client_gone=False)
        limit = self.transport.limit
        source = inner.backend.instance if inner.backend else self.name
        self.fail(502, f"{source} answered with more than the {limit} byte limit")

    # -- Downstream: the UpstreamConnection answers the inner request -----------------------

    @property
    def closed(self) -> bool:
        return self.gone or self.finished or self.client.closed

    def pause(self) -> None:
        pass  # the whole input went out in one write: nothing to hold back

    def resume(self) -> None:
        pass

    def send_to(self, request: Request, backend: Backend) -> None:
        self.client.send_to(request, backend)

    def retry_elsewhere(self, request: Request, failed: Backend) -> bool:
        return self.client.retry_elsewhere(request, failed)

    def respond_failure(self, request: Request, code: int, message: str) -> None:
        self.fail(code, message)

    def close(self) -> None:
        # The instance broke off its answer after it began.
        inner = self.inner
        source = inner.backend.instance if inner is not None and inner.backend else self.name
        self.fail(502, f"{source} broke off its answer")

    def done(self, request: Request, code: int, node: str | None) -> None:
        """The instance answered in full: rewrite its answer for the execute API."""
        if self.finished:
            return
        backend = request.backend
        source = f"{node}: {backend.instance if backend else 'an instance'}"
        buffer = self.transport
        if buffer.size > buffer.limit:
            self.fail(502, f"{source} answered with more than the {buffer.limit} byte limit")
            return
        parts, buffer.parts = buffer.parts, []
        answer = _Answer()
        try:
            httptools.HttpResponseParser(answer).feed_data(b"".join(parts))
        except httptools.HttpParserError as exc:
            self.fail(502, f"{source} answered something that is not HTTP: {exc}")
            return
        body = b"".join(answer.parts)
        document = _json_object(body)
        if 200 <= code < 300:
            if document is None:
                self.fail(
                    502,
                    f"{source} answered {code} with {_describe(body)}, not a JSON object of "
                    "the node's outputs",
                )
                return
            status = 200
            payload = json.dumps({"output": document}, ensure_ascii=False).encode()
        elif code >= 400 and document is not None:
            status, payload = code, body  # the node's own error, as it gave it
        elif code >= 400:
            self.fail(code, f"{source} answered {code} with {_describe(body)}")
            return
        else:
            self.fail(502, f"{source} answered {code}, which the execute API does not pass on")
            return
        self.finished = True
        self.inner = None
        outer = self.outer
        outer.node = request.node
        outer.backend = backend
        outer.local = local_response(status, payload, outer.request_id, not outer.keep_alive)
        self.client.finish_local(outer)


class NonFinite(ValueError):
    """A number the standard library's json would read as NaN or an infinity: the python
    node refuses it (400), and re-encoded it would not be JSON at all."""


def _not_a_number(word: str) -> float:
    # Python's json.dumps writes these by default; JSON has no such numbers.
    raise NonFinite(f"{word}, which is not a JSON number: send finite numbers")


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0.0:
        raise NonFinite(
            f"a number too large for a float, {text[:40]} (JSON numbers are read as 64-bit "
            "floats, whose largest is about 1.8e308)"
        )
    return value


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _describe(body: bytes) -> str:
    if not body:
        return "an empty body"
    shown = body[:200].decode("utf-8", "replace")
    return f"a body that is not a JSON object ({shown!r}{'...' if len(body) > 200 else ''})"
