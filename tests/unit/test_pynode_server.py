"""The in-container runtime of python nodes, over real HTTP on 127.0.0.1.

Each test serves a node from a thread running its own event loop (port 0, so tests never
collide); two tests run the real command as a subprocess. No fixed sleeps: waits poll with
a deadline.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.pynode import types
from gitops_nodes.pynode.codec import Codec, json_codec, orjson_codec
from gitops_nodes.pynode.config import load_config, mentioned_names, parse_config
from gitops_nodes.pynode.errors import ConfigError, PrepareError
from gitops_nodes.pynode.node import MAX_BYTES, prepare
from gitops_nodes.pynode.server import (
    ERRORS_ONLY,
    Service,
    access_every,
    new_event_loop,
    start,
)
from tests.cycles import Cycles
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
MODEL_CODE = "y = sum(w * v for w, v in zip(weights, x)) + bias\n"
COUNTER_CODE = "count += step\ntotal = count\n"


class Served:
    """A node served in a background thread: its port, its access log, and a client."""

    def __init__(self, port: int, log: io.BytesIO, service: Service | None = None) -> None:
        self.port = port
        self.log = log
        self._service = service  # read-only from tests: its loop runs in another thread

    @property
    def service(self) -> Service:
        assert self._service is not None, "served by another process"
        return self._service

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)

    def call(
        self, method: str, path: str, body: object = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        """One request on a fresh connection: (status, decoded JSON body)."""
        connection = self.connect()
        try:
            data = raw if raw is not None else None if body is None else json.dumps(body).encode()
            connection.request(method, path, body=data)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()

    def post(self, body: object) -> tuple[int, Any]:
        return self.call("POST", "/", body)


def write_node(
    folder: Path,
    code: str,
    inputs: dict[str, str],
    outputs: dict[str, str],
    checkpoint: dict[str, Any] | None = None,
    setup: str | None = None,
    **extra: object,
) -> Path:
    """Write a node's code, checkpoint and config into `folder`; return the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "code.py").write_text(textwrap.dedent(code))
    config: dict[str, object] = {"code": "code.py", "inputs": inputs, "outputs": outputs}
    if checkpoint is not None:
        (folder / "state.pkl").write_bytes(pickle.dumps(checkpoint))
        config["checkpoint"] = "state.pkl"
    if setup is not None:
        (folder / "setup.py").write_text(textwrap.dedent(setup))
        config["setup"] = "setup.py"
    config.update(extra)
    path = folder / "node.json"
    path.write_text(json.dumps(config))
    return path


def write_counter(folder: Path) -> Path:
    """The counter node's config in folder: each request adds `step` (an int) to a count
    kept in the namespace."""
    return write_node(
        folder,
        COUNTER_CODE,
        {"step": "int"},
        {"count": "int", "total": "int"},
        setup="count = 0\n",
    )


@contextmanager
def serving(
    config_path: Path,
    codec: Codec | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = new_event_loop,
    unix: Path | None = None,
    every: int = ERRORS_ONLY,
) -> Iterator[Served]:
    """Prepare the node and serve it on a free port of 127.0.0.1 (and on the Unix socket
    `unix`, when given) until the block ends."""
    node = prepare(load_config(config_path), codec)
    log = io.BytesIO()
    loop = loop_factory()
    ready = threading.Event()
    found: list[tuple[int, Service]] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        where = str(unix) if unix is not None else None
        service, server = loop.run_until_complete(
            start(node, "127.0.0.1", 0, log, unix=where, every=every)
        )
        found.append((server.sockets[0].getsockname()[1], service))
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            if service.unix_server is not None:
                service.unix_server.close()
            loop.run_until_complete(server.wait_closed())
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(timeout=5), "the server did not start listening within 5 s"
    try:
        port, service = found[0]
        yield Served(port, log, service)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


@pytest.fixture
def model(tmp_path: Path) -> Iterator[Served]:
    """A model-like node: y = weights . x + bias, its weights restored from a checkpoint."""
    path = write_node(
        tmp_path,
        MODEL_CODE,
        {"x": "list[float]"},
        {"y": "float"},
        checkpoint={"weights": [0.5, -1.0, 2.0], "bias": 0.25},
    )
    with serving(path) as served:
        yield served


def raw_exchange(port: int, data: bytes, until_close: bool = True) -> bytes:
    """Send raw bytes and read what comes back until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while until_close:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def split_response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


# -- answers ------------------------------------------------------------------------------


FAST = orjson_codec()
assert FAST is not None, "orjson is a dev dependency of the runtime"


@pytest.mark.parametrize(
    ("codec", "loop_factory"),
    [(FAST, new_event_loop), (json_codec(), asyncio.new_event_loop)],
    ids=["orjson-uvloop", "json-asyncio"],  # in images without orjson or uvloop
)
def test_model_node_answers_its_outputs_from_checkpoint_weights(
    tmp_path: Path, codec: Codec, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    path = write_node(
        tmp_path,
        MODEL_CODE,
        {"x": "list[float]"},
        {"y": "float"},
        checkpoint={"weights": [0.5, -1.0, 2.0], "bias": 0.25},
    )
    with serving(path, codec, loop_factory) as served:
        assert served.post({"x": [2.0, 1.0, 0.5]}) == (200, {"y": 1.25})
        # ints are accepted where floats are declared
        assert served.call("POST", "/predict", {"x": [2, 1, 3]}) == (200, {"y": 6.25})


def test_state_persists_between_requests(counter: Served) -> None:
    assert counter.post({"step": 1}) == (200, {"count": 1, "total": 1})
    assert counter.post({"step": 1}) == (200, {"count": 2, "total": 2})
    assert counter.post({"step": 5}) == (200, {"count": 7, "total": 7})


def test_ended_connections_leave_no_reference_cycles(counter: Served) -> None:
    """An instance serves for months, and each health check or client that does not keep
    alive is a connection of its own: one left in a reference cycle would wait for a full
    collection, and show as the instance's memory growing until then."""

    assert counter.call("GET", "/healthz")[0] == 200  # warm
    wait_until(lambda: not counter.service.connections, "the warm-up's connection to end")
    with Cycles(("gitops_nodes.", "httptools.")) as cycles:
        for _ in range(5):  # a connection each
            assert counter.call("GET", "/healthz")[0] == 200
            assert counter.post({"step": 1})[0] == 200
        wait_until(lambda: not counter.service.connections, "the connections to end")
    assert not cycles.found, f"10 ended connections left objects in cycles: {cycles.found}"


def test_set_up_code_runs_once_at_start_after_the_checkpoint(tmp_path: Path) -> None:
    path = write_node(
        tmp_path,
        "calls += 1\nout = [scale * n, calls]\n",
        {"n": "int"},
        {"out": "list[int]"},
        checkpoint={"base": 10},
        setup="scale = base * 2\ncalls = 0\n",
    )
    with serving(path) as served:
        assert served.post({"n": 3}) == (200, {"out": [60, 1]})
        assert served.post({"n": 1}) == (200, {"out": [20, 2]})


# -- bad inputs ---------------------------------------------------------------------------


def test_missing_input_is_422_naming_the_field(model: Served) -> None:
    status, body = model.post({})

    assert status == 422
    assert body["error_name"] == "InvalidInput"
    assert body["errors"] == [{"field": "x", "expected": "list[float]", "problem": "missing"}]
    assert "'x' is missing" in body["error_message"]


def test_wrong_type_is_422_saying_what_was_expected(model: Served) -> None:
    status, body = model.post({"x": [1.0, "two", 3.0]})

    assert status == 422
    assert body["errors"] == [
        {"field": "x", "expected": "list[float]", "problem": "item 1 is a string"}
    ]
    assert "expected list[float] (an array of numbers)" in body["error_message"]
    assert model.post({"x": "1,2,3"})[1]["errors"][0]["problem"] == "got a string"


def test_unknown_field_is_422(model: Served) -> None:
    status, body = model.post({"x": [1.0, 2.0, 3.0], "z": 1})

    assert status == 422
    assert body["errors"] == [{"field": "z", "expected": "one of: x", "problem": "unknown input"}]


def test_a_bool_is_not_an_int(counter: Served) -> None:
    status, body = counter.post({"step": True})

    assert status == 422
    assert body["errors"] == [{"field": "step", "expected": "int", "problem": "got a boolean"}]
    assert counter.post({"step": 1.0})[0] == 422  # nor is a float
    assert counter.post({"step": 2}) == (200, {"count": 2, "total": 2})  # state untouched


def test_a_body_that_is_not_a_json_object(model: Served) -> None:
    assert model.call("POST", "/", raw=b"{not json")[0] == 400
    status, body = model.call("POST", "/", raw=b"[1, 2]")
    assert status == 422
    assert "must be a JSON object" in body["error_message"]


def test_type_checks_convert_ints_to_floats_and_explain_failures() -> None:
    list_float = types.TYPES["list[float]"]
    dict_float = types.TYPES["dict[str, float]"]
    assert list_float.check is not None and dict_float.check is not None
    same = [1.5, 2.5]
    assert list_float.check(same) is same  # nothing to convert: no copy
    assert list_float.check([1, 2.5]) == [1.0, 2.5]
    assert type(dict_float.check({"a": 1})["a"]) is float  # type: ignore[index]
    assert dict_float.check({"a": True}) is types.INVALID
    assert types.problem(dict_float, {"a": "b"}) == "the value of key 'a' is a string"
    assert types.problem(list_float, [10**400]) == "item 0 is an integer too large for a float"
    assert types.lookup("dict[str,any]") is types.TYPES["dict[str, any]"]
    assert types.TYPES["any"].check is None


# -- sizes --------------------------------------------------------------------------------


def test_content_length_over_16_mb_is_413_before_the_body_is_sent(model: Served) -> None:
    head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (MAX_BYTES + 1)

    status, headers, body = split_response(raw_exchange(model.port, head))

    assert status == 413
    assert headers["connection"] == "close"
    assert body["error_name"] == "RequestTooLarge"
    assert f"{MAX_BYTES + 1} bytes" in body["error_message"]


def test_chunked_body_growing_past_16_mb_is_413(model: Served) -> None:
    chunk = b"x" * 2**20
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    request = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" + framed * 17

    status, _, body = split_response(raw_exchange(model.port, request))

    assert status == 413
    assert "over the limit of 16777216 bytes" in body["error_message"]
    assert model.post({"x": [0.0, 0.0, 0.0]}) == (200, {"y": 0.25})


def test_a_response_over_16_mb_is_refused(tmp_path: Path) -> None:
    path = write_node(tmp_path, "out = 'a' * size\n", {"size": "int"}, {"out": "str"})
    with serving(path) as served:
        status, body = served.post({"size": MAX_BYTES + 1})
        assert status == 500
        assert body["error_name"] == "ResponseTooLarge"
        assert "over the limit of 16777216 bytes" in body["error_message"]
        assert served.post({"size": 2}) == (200, {"out": "aa"})


# -- failures of the node's code ----------------------------------------------------------


USER_ERROR_CODE = """\
def check(n):
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    return n * 2

out = check(n)
"""


def test_user_exception_is_500_without_traceback_and_the_next_request_works(
    tmp_path: Path,
) -> None:
    path = write_node(tmp_path, USER_ERROR_CODE, {"n": "int"}, {"out": "int"})
    with serving(path) as served:
        status, body = served.post({"n": -1})
        assert status == 500
        message = "n must not be negative, got -1"
        assert body == {"error_name": "ValueError", "error_message": message}
        assert served.post({"n": 4}) == (200, {"out": 8})


def test_traceback_lines_only_when_the_config_asks(tmp_path: Path) -> None:
    path = write_node(tmp_path, USER_ERROR_CODE, {"n": "int"}, {"out": "int"}, traceback=True)
    with serving(path) as served:
        status, body = served.post({"n": -3})
    assert status == 500
    lines = body["traceback"]
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: n must not be negative, got -3"
    code_file = str(tmp_path / "code.py")
    assert any(code_file in line and "line 3" in line for line in lines)
    assert not any("node.py" in line for line in lines)  # the runtime's frames are hidden


def test_an_output_the_code_did_not_set_is_500(tmp_path: Path) -> None:
    path = write_node(tmp_path, "if flag:\n    y = 1\n", {"flag": "bool"}, {"y": "int"})
    with serving(path) as served:
        status, body = served.post({"flag": False})
        assert status == 500
        assert body["error_name"] == "MissingOutput"
        assert "'y'" in body["error_message"]
        assert served.post({"flag": True}) == (200, {"y": 1})


def test_an_output_of_the_wrong_type_is_500_naming_it(tmp_path: Path) -> None:
    code = "y = 'ten' if broken else 10\nz = [1, 2.5]\n"
    path = write_node(tmp_path, code, {"broken": "bool"}, {"y": "float", "z": "list[float]"})
    with serving(path) as served:
        status, body = served.post({"broken": True})
        assert status == 500
        assert body["error_name"] == "InvalidOutput"
        assert "output 'y': expected float (a number), got a string" in body["error_message"]
        # The instance keeps serving; ints declared as floats are answered as floats.
        assert served.post({"broken": False}) == (200, {"y": 10.0, "z": [1.0, 2.5]})


def test_numpy_like_and_tuple_outputs_pass_as_the_plain_values_they_stand_for(
    tmp_path: Path,
) -> None:
    # Stand-ins with numpy's interface: a float subclass and a str subclass (numpy.float64,
    # numpy.str_) and an array, each answering tolist() with the plain value.
    code = """\
    class Float64(float):
        def tolist(self):
            return float(self)
    class Str(str):
        def tolist(self):
            return str(self)
    class Array:
        def __init__(self, items):
            self.items = items
        def tolist(self):
            return list(self.items)
    p = Array([0.25, n * 0.75])
    best = Float64(0.75)
    name = Str("b")
    pair = (1, 2.0)
    bad = Array(["x"])
    """
    outputs = {"p": "list[float]", "best": "float", "name": "str", "pair": "list[float]"}
    path = write_node(tmp_path, code, {"n": "int"}, outputs)
    with serving(path) as served:
        status, body = served.post({"n": 1})
    assert (status, body) == (200, {"p": [0.25, 0.75], "best": 0.75, "name": "b", "pair": [1, 2]})
    assert type(body["pair"][0]) is float  # the int given for a float is answered as 1.0
    path = write_node(tmp_path / "bad", code, {"n": "int"}, {"bad": "list[float]"})
    with serving(path) as served:
        status, body = served.post({"n": 1})
    assert status == 500
    assert body["error_name"] == "InvalidOutput"
    assert (
        "output 'bad': expected list[float] (an array of numbers), item 0 is a string"
        in (body["error_message"])
    )


# -- the other endpoints ------------------------------------------------------------------


def test_healthz_is_200(model: Served) -> None:
    assert model.call("GET", "/healthz") == (200, {"status": "ok"})


def test_openapi_describes_the_inputs_and_outputs(model: Served) -> None:
    status, document = model.call("GET", "/openapi.json")

    assert status == 200
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    assert schemas["Inputs"]["properties"]["x"]["type"] == "array"
    assert schemas["Inputs"]["properties"]["x"]["items"] == {"type": "number"}
    assert schemas["Inputs"]["required"] == ["x"]
    assert schemas["Inputs"]["additionalProperties"] is False
    assert schemas["Outputs"]["properties"]["y"]["type"] == "number"
    post = document["paths"]["/"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Inputs"
    }
    assert {"200", "413", "422", "500"} <= set(post["responses"])
    assert "/predict" in document["paths"]


def test_unknown_path_is_404_and_wrong_method_is_405(model: Served) -> None:
    status, body = model.call("GET", "/nope")
    assert (status, body["error_name"]) == (404, "NotFound")
    status, body = model.call("GET", "/")
    assert (status, body["error_name"]) == (405, "MethodNotAllowed")
    assert model.call("POST", "/healthz", {})[0] == 405


# -- HTTP ---------------------------------------------------------------------------------


def test_an_absolute_form_target_is_served_as_its_path(model: Served) -> None:
    # RFC 9112 3.2.2: a server must accept it; clients set to use a proxy send it.
    for target in (b"http://127.0.0.1/healthz", b"HTTP://node:8080/openapi.json?x=1"):
        raw = raw_exchange(model.port, b"GET %s HTTP/1.1\r\nConnection: close\r\n\r\n" % target)
        assert split_response(raw)[0] == 200, raw
    body = b'{"x": [1, 1, 1]}'
    raw = raw_exchange(
        model.port,
        b"POST http://x HTTP/1.1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), body),
    )
    assert split_response(raw)[:1] == (200,) and split_response(raw)[2] == {"y": 1.75}


STEP = b'{"step": 1}'
CHUNKED_STEP = b"b\r\n%s\r\n0\r\n\r\n" % STEP


@pytest.mark.parametrize(
    ("head", "status", "words"),
    [
        (b"POST / HTTP/2.0\r\nContent-Length: 11\r\n\r\n" + STEP, 505, "HTTP/2.0 is not served"),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + CHUNKED_STEP,
            501,
            "transfer coding 'gzip' is not supported",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: br\r\nTransfer-Encoding: chunked\r\n\r\n"
            + CHUNKED_STEP,
            501,
            "transfer coding 'br' is not supported",
        ),
        # RFC 9112 6.3: without chunked last, the body's length cannot be known: 400.
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n" + STEP, 400, "malformed"),
        # HTTP/0.9: a request line alone, answered at once (was held until the head timeout).
        (b"GET /\r\n", 505, "without an HTTP version (HTTP/0.9)"),
        (b"\r\nGET /healthz\n", 505, "without an HTTP version (HTTP/0.9)"),
    ],
    ids=[
        "HTTP/2.0 request line",
        "gzip, chunked",
        "br, then chunked",
        "gzip alone",
        "HTTP/0.9",
        "HTTP/0.9 after an empty line",
    ],
)
def test_a_version_or_transfer_coding_it_cannot_read_is_refused_not_misread(
    counter: Served, head: bytes, status: int, words: str
) -> None:
    answer, headers, body = split_response(raw_exchange(counter.port, head))
    assert (answer, headers["connection"]) == (status, "close")
    assert words in body["error_message"]
    assert counter.post({"step": 1}) == (200, {"count": 1, "total": 1})  # it never ran


def test_keep_alive_serves_many_requests_on_one_connection(counter: Served) -> None:
    connection = counter.connect()
    try:
        sockets = []
        for expected in range(1, 6):
            connection.request("POST", "/", body=b'{"step": 1}')
            response = connection.getresponse()
            assert json.loads(response.read()) == {"count": expected, "total": expected}
            assert response.getheader("connection") is None
            sockets.append(connection.sock)
        # http.client would have opened a new socket had the server closed the connection
        assert all(sock is sockets[0] for sock in sockets)
    finally:
        connection.close()


def test_http_1_0_keep_alive_and_pipelined_requests(counter: Served) -> None:
    one = b'POST / HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: 11\r\n\r\n{"step": 1}'
    last = b'POST /predict HTTP/1.0\r\ncontent-length: 11\r\n\r\n{"step": 2}'

    raw = raw_exchange(counter.port, one + one + last)  # sent at once: answered in order

    answers = raw.split(b"HTTP/1.1 ")[1:]
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"200 OK"] * 3
    assert b"connection: keep-alive" in answers[0]
    assert b"connection: close" in answers[2]  # 1.0 without keep-alive: closed after
    assert answers[2].endswith(b'{"count":4,"total":4}')


def post_step(step: int, *headers: bytes) -> bytes:
    """A counter request with a body of 11 bytes whatever the step (0 to 9)."""
    body = b'{"step": %d}' % step
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"POST / HTTP/1.1\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, Any]]:
    """Read `count` whole responses from a socket: (status, JSON body); 100 Continue is
    (100, None)."""
    data = b""
    answers: list[tuple[int, Any]] = []
    while len(answers) < count:
        if data.startswith(CONTINUE):
            answers.append((100, None))
            data = data[len(CONTINUE) :]
            continue
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode()
            length = int(re.search(r"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            end = head_end + 4 + length
            if len(data) >= end:
                answers.append((int(head.split()[1]), json.loads(data[head_end + 4 : end])))
                data = data[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {len(answers)} of {count} answers"
        data += chunk
    return answers


def test_a_head_seen_before_is_answered_from_memory_with_its_own_body(counter: Served) -> None:
    with socket.create_connection(("127.0.0.1", counter.port), timeout=5) as sock:
        answers = []
        for step in (1, 2, 3):  # the same head bytes each time; bodies differ
            sock.sendall(post_step(step))
            answers += read_answers(sock, 1)

    assert answers == [(200, {"count": c, "total": c}) for c in (1, 3, 6)]
    assert list(counter.service.known) == [post_step(1)[: -len(b'{"step": 1}')]]


def test_heads_that_must_be_parsed_every_time_are_not_remembered(counter: Served) -> None:
    chunked = b'POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nb\r\n{"step": 1}\r\n0\r\n\r\n'
    expect = post_step(1, b"expect: 100-continue")
    with socket.create_connection(("127.0.0.1", counter.port), timeout=5) as sock:
        for request in (chunked, chunked, expect):
            sock.sendall(request)
            answers = read_answers(sock, 2 if request is expect else 1)  # 100 Continue first
            assert answers[-1][0] == 200
        sock.sendall(b"GET /nowhere HTTP/1.1\r\n\r\n")
        assert read_answers(sock, 1)[0][0] == 404

    assert counter.service.known == {}
    assert counter.call("POST", "/", {"step": 1}) == (200, {"count": 4, "total": 4})


def test_requests_of_many_connections_in_one_turn_each_run_once(counter: Served) -> None:
    sockets = [socket.create_connection(("127.0.0.1", counter.port), timeout=5) for _ in range(8)]
    try:
        for sock in sockets:  # all sent before any is read: the server reads several a turn
            sock.sendall(post_step(1) + post_step(1))
        answers = [read_answers(sock, 2) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()

    counts = sorted(body["count"] for pair in answers for _, body in pair)
    assert counts == list(range(1, 17))  # each ran exactly once, one at a time
    assert all(first[1]["count"] < second[1]["count"] for first, second in answers)


def test_a_malformed_request_after_a_queued_one_is_refused_after_its_answer(
    counter: Served,
) -> None:
    raw = raw_exchange(counter.port, post_step(1) + b"NOT HTTP AT ALL\r\n\r\n")

    answers = raw.split(b"HTTP/1.1 ")[1:]
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"200 OK", b"400 Bad Request"]
    assert answers[0].endswith(b'{"count":1,"total":1}')


def test_what_follows_a_connection_close_request_is_never_run(counter: Served) -> None:
    raw = raw_exchange(counter.port, post_step(1, b"connection: close") + post_step(5))

    assert raw.count(b"HTTP/1.1 ") == 1
    assert raw.endswith(b'{"count":1,"total":1}')
    assert counter.post({"step": 1}) == (200, {"count": 2, "total": 2})


def test_100_continue_comes_after_the_answers_queued_before_it(counter: Served) -> None:
    head_only = post_step(2, b"expect: 100-continue")[: -len(b'{"step": 2}')]
    with socket.create_connection(("127.0.0.1", counter.port), timeout=5) as sock:
        sock.sendall(post_step(1) + head_only)
        first, go_on = read_answers(sock, 2)
        sock.sendall(b'{"step": 2}')
        last = read_answers(sock, 1)[0]

    assert (first, go_on, last) == (
        (200, {"count": 1, "total": 1}),
        (100, None),
        (200, {"count": 3, "total": 3}),
    )


def test_the_node_serves_on_a_unix_socket_as_well(tmp_path: Path) -> None:
    path = write_node(
        tmp_path, COUNTER_CODE, {"step": "int"}, {"count": "int"}, setup="count = 0\n"
    )
    socket_path = tmp_path / "socket"
    socket_path.write_text("left by an earlier run")  # replaced, not an error

    with serving(path, unix=socket_path) as served:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(socket_path))
            sock.sendall(post_step(2))
            over_unix = read_answers(sock, 1)
        over_tcp = served.post({"step": 1})

    assert over_unix == [(200, {"count": 2})]
    assert over_tcp == (200, {"count": 3})  # one namespace behind both
    assert socket_path.stat().st_mode & 0o777 == 0o666  # any local user's balancer may connect


def test_an_upgrade_request_with_a_body_is_refused_once(model: Served) -> None:
    request = (
        b"POST / HTTP/1.1\r\nconnection: upgrade\r\nupgrade: h2c\r\ncontent-length: 15\r\n"
        b'\r\n{"x": [1, 2, 3]}'
    )

    raw = raw_exchange(model.port, request)

    assert raw.count(b"HTTP/1.1 ") == 1
    status, _, body = split_response(raw)
    assert (status, body["error_message"]) == (400, "protocol upgrades are not supported")


def test_by_default_only_errors_are_logged_and_never_health_checks(model: Served) -> None:
    model.post({"x": [1.0, 1.0, 1.0]})
    model.call("GET", "/healthz")
    model.call("GET", "/nope")
    model.post({"x": "not a list"})
    model.call("POST", "/healthz")

    lines = model.log.getvalue().decode().splitlines()

    assert [line.rsplit(" ", 1)[0] for line in lines] == [
        "GET /nope 404",
        "POST / 422",
        "POST /healthz 405",
    ]
    assert all(line.endswith("us") and line.rsplit(" ", 1)[1][:-2].isdigit() for line in lines)


@pytest.mark.parametrize(("every", "logged"), [(1, 6), (3, 2)])
def test_all_or_one_in_n_requests_are_logged_when_asked_health_checks_never(
    tmp_path: Path, every: int, logged: int
) -> None:
    path = write_node(
        tmp_path,
        COUNTER_CODE,
        {"step": "int"},
        {"count": "int", "total": "int"},
        checkpoint={"count": 0},
    )
    with serving(path, every=every) as counter:
        for _ in range(6):
            assert counter.post({"step": 1})[0] == 200
            assert counter.call("GET", "/healthz")[0] == 200
        assert counter.call("GET", "/nope")[0] == 404
        lines = counter.log.getvalue().decode().splitlines()

    assert [line.rsplit(" ", 1)[0] for line in lines] == ["POST / 200"] * logged + ["GET /nope 404"]


@pytest.mark.parametrize(
    ("setting", "every"), [("errors", ERRORS_ONLY), ("all", 1), ("ALL", 1), ("100", 100)]
)
def test_the_access_log_setting(setting: str, every: int) -> None:
    assert access_every(setting) == every


@pytest.mark.parametrize("setting", ["0", "-1", "some", ""])
def test_a_bad_access_log_setting_says_what_is_expected(setting: str) -> None:
    with pytest.raises(ValueError, match="expected errors, all, or a number N"):
        access_every(setting)


# -- start-up errors ----------------------------------------------------------------------


def test_an_output_the_code_never_mentions_is_a_config_error(tmp_path: Path) -> None:
    path = write_node(tmp_path, MODEL_CODE, {"x": "list[float]"}, {"y": "float", "z": "float"})

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert "output 'z'" in str(caught.value)
    assert str(tmp_path / "code.py") in str(caught.value)


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "code.py").write_text("y = x\n")
    base = {"code": "code.py", "inputs": {"x": "int"}, "outputs": {"y": "int"}}
    cases: list[tuple[dict[str, object], str]] = [
        ({**base, "inputs": {"x": "complex"}}, "has type 'complex'"),
        ({**base, "inputs": {"class": "int"}}, "not a Python variable name"),
        ({**base, "extra": 1}, "unknown key(s) 'extra'"),
        ({**base, "code": "missing.py"}, "cannot read the code"),
        ({**base, "checkpoint": "none.pkl"}, "checkpoint file"),
    ]
    for config, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config(config, tmp_path, "node.json")
    (tmp_path / "code.py").write_text("y = = x\n")
    with pytest.raises(ConfigError, match=r"code.py:1:\d+ is not valid Python"):
        parse_config(base, tmp_path, "node.json")


def test_names_the_code_mentions() -> None:
    import ast

    tree = ast.parse("import numpy as np\nglobal g\ndef f(a): return b\nfor i in c: pass\n")
    assert {"np", "g", "f", "b", "i", "c"} <= mentioned_names(tree)
    assert "a" not in mentioned_names(tree)  # a parameter is the function's, not the node's


def test_a_broken_checkpoint_or_set_up_is_a_prepare_error(tmp_path: Path) -> None:
    path = write_node(tmp_path, "y = x\n", {"x": "int"}, {"y": "int"})
    (tmp_path / "state.pkl").write_bytes(b"not a pickle")
    config = json.loads(path.read_text())
    with pytest.raises(PrepareError, match=r"checkpoint .* cannot be loaded"):
        prepare(parse_config({**config, "checkpoint": "state.pkl"}, tmp_path))
    (tmp_path / "state.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(PrepareError, match="must hold a dict"):
        prepare(parse_config({**config, "checkpoint": "state.pkl"}, tmp_path))
    (tmp_path / "setup.py").write_text("raise RuntimeError('no data')\n")
    with pytest.raises(PrepareError, match=r"set-up code .* raised RuntimeError: no data"):
        prepare(parse_config({**config, "setup": "setup.py"}, tmp_path))


# -- the command --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(config: Path, port: int) -> list[str]:
    module = "gitops_nodes.pynode.server"
    return [sys.executable, "-m", module, "--config", str(config), "--port", str(port)]


def test_the_command_serves_until_sigterm(tmp_path: Path) -> None:
    path = write_node(
        tmp_path,
        COUNTER_CODE,
        {"step": "int"},
        {"count": "int", "total": "int"},
        checkpoint={"count": 10},
    )
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GITOPS_NODES_ACCESS_LOG": "all"}
    process = subprocess.Popen(
        [*command(path, port), "--host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:

        def healthy() -> bool:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                return Served(port, io.BytesIO()).call("GET", "/healthz")[0] == 200
            except OSError:
                return False

        wait_until(healthy, "the node's /healthz to answer 200", every=0.005)
        assert Served(port, io.BytesIO()).post({"step": 1}) == (200, {"count": 11, "total": 11})
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=5)
    assert process.returncode == 0, err
    lines = out.decode().splitlines()
    assert lines[0].startswith("pynode: serving ")
    assert "POST / 200 " in lines[-1]


def test_the_runtime_imports_neither_docker_nor_the_rest_of_gitops_nodes() -> None:
    code = "import gitops_nodes.pynode.server, json, sys; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=10
    )
    loaded = set(json.loads(result.stdout))

    ours = {m for m in loaded if m.startswith("gitops_nodes.")}
    assert ours <= {m for m in loaded if m.startswith("gitops_nodes.pynode")}
    heavy = {m.split(".")[0] for m in loaded} & {"docker", "pydantic", "starlette", "balancer"}
    assert heavy == set()


def test_the_command_exits_1_with_the_reason_when_the_config_is_wrong(tmp_path: Path) -> None:
    path = write_node(tmp_path, "y = 1\n", {"x": "int"}, {"y": "int"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    result = subprocess.run(command(path, free_port()), capture_output=True, env=env, timeout=10)

    assert result.returncode == 1
    assert b"never mentions input 'x'" in result.stderr
