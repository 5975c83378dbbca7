"""Batched python nodes and outputs that are never silently wrong, over real HTTP on 127.0.0.1.

A batched node's code runs once for many requests: these tests send requests pipelined in
one write (read by the server in one go, so they form one batch whatever the machine's
load) or from many connections at once, and read the batch sizes the code recorded back
through an output.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.pynode.codec import json_codec
from gitops_nodes.pynode.config import load_config
from gitops_nodes.pynode.errors import ConfigError
from gitops_nodes.pynode.server import BatchingService
from tests.unit.test_pynode_server import read_answers, serving, write_node
from tests.waiting import wait_until

# Each request gets 2*x and the size of the batch it ran in; `runs` counts runs of the code.
BATCH_CODE = """\
runs += 1
sizes.append(len(x))
if "boom" in tag:
    raise RuntimeError("boom in this batch")
y = [2 * v for v in x]
size = [len(x)] * len(x)
"""


def batched(folder: Path, code: str = BATCH_CODE, **batch: object) -> Path:
    return write_node(
        folder,
        code,
        {"x": "float", "tag": "str"},
        {"y": "float", "size": "int"},
        setup="runs = 0\nsizes = []\n",
        batch={"maxSize": 64, "maxDelay": 0.002, **batch},
    )


def post(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return b"POST / HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data)


def pipelined(port: int, bodies: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """Send every request in one write on one connection; read every answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(post(body) for body in bodies))
        return read_answers(sock, len(bodies))


def test_requests_read_together_run_as_one_batch_each_answered_its_own(tmp_path: Path) -> None:
    with serving(batched(tmp_path)) as served:
        answers = pipelined(served.port, [{"x": n, "tag": "a"} for n in range(10)])
        assert answers == [(200, {"y": 2.0 * n, "size": 10}) for n in range(10)]
        assert served.service.node.namespace["runs"] == 1


def test_a_batch_holds_at_most_max_size_requests_in_order(tmp_path: Path) -> None:
    with serving(batched(tmp_path, maxSize=4)) as served:
        answers = pipelined(served.port, [{"x": n, "tag": "a"} for n in range(10)])
        assert [body["y"] for _, body in answers] == [2.0 * n for n in range(10)]
        assert [body["size"] for _, body in answers] == [4] * 8 + [2] * 2
        assert served.service.node.namespace["sizes"] == [4, 4, 2]


def test_requests_from_many_connections_at_once_share_batches(tmp_path: Path) -> None:
    """64 connections each send 20 requests, one after the other: every request is answered
    its own value, and batches form (fewer runs than requests)."""
    with serving(batched(tmp_path, maxDelay=0.05)) as served:
        wrong: list[str] = []

        def client(number: int) -> None:
            with socket.create_connection(("127.0.0.1", served.port), timeout=20) as sock:
                for step in range(20):
                    value = number * 100 + step
                    sock.sendall(post({"x": value, "tag": "a"}))
                    ((status, body),) = read_answers(sock, 1)
                    if status != 200 or body["y"] != 2.0 * value:
                        wrong.append(f"{value}: {status} {body}")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not wrong
        namespace = served.service.node.namespace
        assert sum(namespace["sizes"]) == 64 * 20
        assert namespace["runs"] < 64 * 20  # some requests shared a run of the code


def test_one_request_at_a_time_never_waits_for_max_delay(tmp_path: Path) -> None:
    """An idle instance runs a request at once: with maxDelay 1 s, 3 requests in a row take
    less than half of the 3 s they would if each waited for it."""
    with serving(batched(tmp_path, maxDelay=1.0)) as served:
        began = time.monotonic()
        for n in range(3):
            assert served.post({"x": n, "tag": "a"}) == (200, {"y": 2.0 * n, "size": 1})
        assert time.monotonic() - began < 1.5


def test_a_batch_waits_for_the_callers_the_last_one_answered(tmp_path: Path) -> None:
    """A answered in a batch is expected back: B's request waits for A's next one, and both
    run together, long before maxDelay (1 s)."""
    with serving(batched(tmp_path, maxDelay=1.0)) as served:
        a = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        b = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        with a, b:
            a.sendall(post({"x": 1, "tag": "a"}) + post({"x": 2, "tag": "a"}))
            assert [body["size"] for _, body in read_answers(a, 2)] == [2, 2]
            began = time.monotonic()
            b.sendall(post({"x": 3, "tag": "b"}))
            wait_until(lambda: served.service.turn, "B's request to be read")
            a.sendall(post({"x": 4, "tag": "a"}))
            assert read_answers(b, 1) == [(200, {"y": 6.0, "size": 2})]
            assert read_answers(a, 1) == [(200, {"y": 8.0, "size": 2})]
            assert time.monotonic() - began < 1.0


def test_a_caller_that_does_not_come_back_costs_at_most_max_delay(tmp_path: Path) -> None:
    """A is expected but stays quiet: B's request runs when maxDelay (0.5 s) has passed. Once
    A has closed, B alone is expected, so its next request runs at once."""
    with serving(batched(tmp_path, maxDelay=0.5)) as served:
        a = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        b = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        with a, b:
            a.sendall(post({"x": 1, "tag": "a"}))
            read_answers(a, 1)
            began = time.monotonic()
            b.sendall(post({"x": 3, "tag": "b"}))
            assert read_answers(b, 1) == [(200, {"y": 6.0, "size": 1})]
            assert 0.45 < time.monotonic() - began < 5.0
            a.close()
            service = served.service
            assert isinstance(service, BatchingService)
            wait_until(lambda: len(service.expected) == 1, "A to be forgotten")
            began = time.monotonic()
            b.sendall(post({"x": 4, "tag": "b"}))
            assert read_answers(b, 1) == [(200, {"y": 8.0, "size": 1})]
            assert time.monotonic() - began < 0.45


def test_an_exception_fails_exactly_the_requests_of_its_batch(tmp_path: Path) -> None:
    with serving(batched(tmp_path)) as served:
        first = pipelined(served.port, [{"x": 1, "tag": "a"}, {"x": 2, "tag": "boom"}])
        second = pipelined(served.port, [{"x": 3, "tag": "a"}])
        assert [status for status, _ in first] == [500, 500]
        assert first[0][1] == first[1][1]
        assert first[0][1]["error_name"] == "RuntimeError"
        assert second == [(200, {"y": 6.0, "size": 1})]


def test_a_bad_request_in_a_batch_is_refused_alone(tmp_path: Path) -> None:
    with serving(batched(tmp_path)) as served:
        answers = pipelined(
            served.port, [{"x": 1, "tag": "a"}, {"x": "one", "tag": "a"}, {"x": 3, "tag": "a"}]
        )
        assert answers[0] == (200, {"y": 2.0, "size": 2})
        assert answers[1][0] == 422 and answers[1][1]["errors"][0]["field"] == "x"
        assert answers[2] == (200, {"y": 6.0, "size": 2})


def test_health_checks_between_calls_keep_the_connection_s_order(tmp_path: Path) -> None:
    with serving(batched(tmp_path)) as served:
        health = b"GET /healthz HTTP/1.1\r\n\r\n"
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(post({"x": 1, "tag": "a"}) + health + post({"x": 2, "tag": "a"}))
            answers = read_answers(sock, 3)
        assert answers == [
            (200, {"y": 2.0, "size": 2}),
            (200, {"status": "ok"}),
            (200, {"y": 4.0, "size": 2}),
        ]


@pytest.mark.parametrize(
    ("code", "named"),
    [
        ("y = [2 * v for v in x][:-1]\nsize = [1] * len(x)\n", "'y': expected a list of 2"),
        ("y = 2.0\nsize = [1] * len(x)\n", "'y': expected a list of 2"),
        ("y = [2 * v for v in x]\nsize = [1.5] * len(x)\n", "output 'size': expected int"),
    ],
    ids=["short", "not-a-list", "wrong-type"],
)
def test_an_output_of_the_wrong_length_or_type_is_500_naming_it(
    tmp_path: Path, code: str, named: str
) -> None:
    code = "_ = tag\n" + code
    with serving(batched(tmp_path, code=code, maxDelay=0.0)) as served:
        answers = pipelined(served.port, [{"x": 1, "tag": "a"}, {"x": 2, "tag": "a"}])
        for status, body in answers:
            assert status == 500 and body["error_name"] == "InvalidOutput"
            assert named in body["error_message"]


def test_numpy_arrays_in_and_out(tmp_path: Path) -> None:
    path = write_node(
        tmp_path,
        "import numpy\ny = x.sum(axis=1)\nkind = [type(x).__name__] * len(x)\n",
        {"x": "list[float]"},
        {"y": "float", "kind": "str"},
        batch={"maxSize": 8, "numpy": True},
    )
    with serving(path) as served:
        answers = pipelined(served.port, [{"x": [1, 2]}, {"x": [3, 4.5]}])
        assert answers == [
            (200, {"y": 3.0, "kind": "ndarray"}),
            (200, {"y": 7.5, "kind": "ndarray"}),
        ]


def test_batch_settings_are_checked(tmp_path: Path) -> None:
    for bad in ({"maxSize": 0}, {"maxSize": 8, "maxDelay": 2}, {"size": 8}, 8):
        path = write_node(tmp_path, "y = x\n", {"x": "float"}, {"y": "float"}, batch=bad)
        with pytest.raises(ConfigError, match="batch"):
            load_config(path)


# -- outputs never silently wrong ---------------------------------------------------------

NON_FINITE_CODE = """\
value = float(x)
total += value
mean = total
items = [1.0, value * 10]
table = {"a": value * 10}
"""


def non_finite_node(folder: Path, **extra: Any) -> Path:
    return write_node(
        folder,
        NON_FINITE_CODE,
        {"x": "float"},
        {"mean": "float", "items": "list[float]", "table": "dict[str, any]"},
        setup="total = 0.0\n",
        **extra,
    )


@pytest.mark.parametrize("codec", [None, json_codec()], ids=["orjson", "json"])
def test_a_non_finite_float_output_is_500_naming_it(tmp_path: Path, codec: Any) -> None:
    with serving(non_finite_node(tmp_path), codec=codec) as served:
        status, body = served.post({"x": 1e308})  # x * 10 overflows
        assert status == 500 and body["error_name"] == "InvalidOutput"
        assert "'items' (item 1)" in body["error_message"]
        assert "allowNonFinite" in body["error_message"]
        status, body = served.post({"x": 1e308})  # the running total overflows
        assert status == 500 and "output 'mean' is inf" in body["error_message"]
        assert served.post({"x": 1.0})[0] == 500  # never null, never 200


def test_non_finite_floats_are_null_when_the_node_allows_them(tmp_path: Path) -> None:
    for codec in (None, json_codec()):
        with serving(non_finite_node(tmp_path, allowNonFinite=True), codec=codec) as served:
            status, body = served.post({"x": 1e308})
            assert status == 200
            assert body["items"] == [1.0, None] and body["table"] == {"a": None}


def test_a_null_that_is_a_real_value_is_still_answered(tmp_path: Path) -> None:
    path = write_node(tmp_path, "y = None if x else 'null'\n", {"x": "bool"}, {"y": "any"})
    with serving(path) as served:
        assert served.post({"x": True}) == (200, {"y": None})
        assert served.post({"x": False}) == (200, {"y": "null"})


def test_a_batched_non_finite_output_fails_only_its_request(tmp_path: Path) -> None:
    code = "_ = tag\ny = [1.0 / v if v else float('inf') for v in x]\nsize = [1] * len(x)\n"
    with serving(batched(tmp_path, code=code)) as served:
        answers = pipelined(served.port, [{"x": 2, "tag": "a"}, {"x": 0, "tag": "a"}])
        assert answers[0] == (200, {"y": 0.5, "size": 1})
        assert answers[1][0] == 500 and "'y' is inf" in answers[1][1]["error_message"]


@pytest.mark.parametrize("codec", [None, json_codec()], ids=["orjson", "json"])
def test_a_number_too_large_for_a_float_is_400_saying_so(tmp_path: Path, codec: Any) -> None:
    with serving(non_finite_node(tmp_path), codec=codec) as served:
        status, body = served.call("POST", "/", raw=b'{"x": 1e400}')
        assert status == 400 and body["error_name"] == "InvalidJSON"
        assert "too large for a float" in body["error_message"]


@pytest.mark.parametrize("codec", [None, json_codec()], ids=["orjson", "json"])
@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_or_infinity_in_a_body_is_400_saying_json_has_no_such_number(
    tmp_path: Path, codec: Any, literal: bytes
) -> None:
    with serving(non_finite_node(tmp_path), codec=codec) as served:
        status, body = served.call("POST", "/", raw=b'{"x": %s}' % literal)
        assert (status, body["error_name"]) == (400, "InvalidJSON")
        assert "has NaN or Infinity, which JSON has no numbers for" in body["error_message"]
        status, body = served.call("POST", "/", raw=b'{"x": Nope}')
        assert status == 400 and "NaN" not in body["error_message"]
