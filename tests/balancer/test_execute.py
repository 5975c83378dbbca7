"""The execute API: POST /datasphere/v1/{nodes/<n>|aliases/<a>}:execute, called the way the
reference platform's documented clients call it (plain HTTP, JSON bodies, its headers)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from balancer.proxy import ProxySettings
from tests.balancer.backend import MIB
from tests.balancer.conftest import HOST, BackendProcess, BalancerHarness, Reply, alias, node, send
from tests.balancer.test_proxying import read_response
from tests.waiting import wait_until

NODE_URL = "/datasphere/v1/nodes/{}:execute"
ALIAS_URL = "/datasphere/v1/aliases/{}:execute"
JSON = {"content-type": "application/json"}


@pytest.fixture
def two_nodes(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> tuple[BalancerHarness, BackendProcess, BackendProcess]:
    """Nodes a (instance a1) and b (b1); alias w splits 1:1 between them, alias only-a."""
    a1, b1 = start_backend("a1"), start_backend("b1")
    balancer.publish(
        {"a": node(a1), "b": node(b1)}, {"w": alias(("a", 1), ("b", 1)), "only-a": alias(("a", 1))}
    )
    balancer.wait_status({"a1": "Healthy", "b1": "Healthy"})
    return balancer, a1, b1


def execute(
    balancer: BalancerHarness, url: str, body: Any, headers: dict[str, str] | None = None
) -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return balancer.request("POST", url, headers={**JSON, **(headers or {})}, body=raw)


def seen_headers(output: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in output["headers"]:
        found.setdefault(name.lower(), []).append(value)
    return found


def assert_balancer_error(reply: Reply, code: int, name: str, *fragments: str) -> dict[str, Any]:
    assert reply.status == code, reply.body
    assert reply.header("content-type") == "application/json"
    document: dict[str, Any] = reply.json()
    assert document["status"] == code and document["requestId"], document
    assert document["error_name"] == name, document
    assert document["error_message"] == document["error"], document
    for fragment in fragments:
        assert fragment in document["error"], (fragment, document)
    return document


# -- answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        {"folder": "folder_id", "target": "node_id"},  # the gRPC/JSON names of the reference
        {"folder": "folderId", "target": "nodeId"},  # its REST names
    ],
)
def test_a_node_call_answers_the_outputs_wrapped(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess], spelling: dict[str, str]
) -> None:
    balancer, a1, _ = two_nodes
    inputs = {"features": [1.5, -2, 3e-7], "text": "é ✓", "nested": {"k": [None, True]}}
    body = {spelling["folder"]: "f-1", spelling["target"]: "a", "input": inputs}
    reply = execute(
        balancer,
        NODE_URL.format("a"),
        body,
        {"x-folder-id": "f-1", "authorization": "Bearer t", "x-request-id": "rid-1"},
    )
    assert reply.status == 200, reply.body
    assert reply.header("content-type") == "application/json"
    assert reply.header("x-request-id") == "rid-1"
    document = reply.json()
    assert list(document) == ["output"]
    output = document["output"]
    assert output["name"] == "a1" and output["inputs"] == inputs
    # the input went to the instance as POST /, with the usual forwarding headers
    headers = seen_headers(output)
    assert headers["content-type"] == ["application/json"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-request-id"] == ["rid-1"]
    assert headers["x-folder-id"] == ["f-1"] and headers["authorization"] == ["Bearer t"]
    assert a1.counts()["/"] == 1


def test_input_may_be_left_out_for_a_node_without_inputs(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, _, _ = two_nodes
    for body in ({"folder_id": "f"}, {"input": None}, {}):
        reply = execute(balancer, NODE_URL.format("a"), body)
        assert reply.status == 200, reply.body
        assert reply.json()["output"]["inputs"] == {}


@pytest.mark.parametrize("name", ["w", "datasphere.user.w"])
def test_an_alias_call_is_balanced_over_its_nodes(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess], name: str
) -> None:
    balancer, _, _ = two_nodes
    served = set()
    conn = balancer.connect()
    try:
        for index in range(4):
            body = {"folder_id": "f", "alias_name": name, "input": {"i": index}}
            reply = send(conn, "POST", ALIAS_URL.format(name), JSON, json.dumps(body))
            assert reply.status == 200, reply.body
            output = reply.json()["output"]
            assert output["inputs"] == {"i": index}
            served.add(output["name"])
    finally:
        conn.close()
    assert served == {"a1", "b1"}


def test_execute_calls_and_plain_proxying_share_a_connection(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, _, _ = two_nodes
    conn = balancer.connect()
    try:
        for index in range(3):
            reply = send(conn, "POST", NODE_URL.format("a"), JSON, json.dumps({"input": {}}))
            assert reply.status == 200 and "output" in reply.json(), reply.body
            reply = send(conn, "GET", f"/aliases/only-a/plain?i={index}")
            assert reply.status == 200 and reply.json()["target"] == f"/plain?i={index}"
            headers = {"x-node-alias": "datasphere.user.only-a"}
            reply = send(conn, "POST", "/echo", headers, b"raw bytes")
            assert reply.status == 200 and reply.body == b"raw bytes"
    finally:
        conn.close()


def test_metrics_count_execute_calls_under_their_alias_and_node(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, _, _ = two_nodes
    for _ in range(3):
        assert execute(balancer, ALIAS_URL.format("only-a"), {"input": {}}).status == 200
    assert execute(balancer, NODE_URL.format("b"), {"input": {}}).status == 200
    lines = set(balancer.admin("GET", "/-/metrics").body.decode().splitlines())
    for line in (
        'alias_requests_total{alias_name="only-a"} 3',
        'node_requests_total{node_id="a"} 3',
        'node_http_codes_total{node_id="b",code="200"} 1',
    ):
        assert line in lines, line


# -- the node's errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (
            500,
            {
                "error_name": "ValueError",
                "error_message": "negative first feature",
                "traceback": ["Traceback (most recent call last):", "ValueError: negative"],
            },
        ),
        (500, {"error_name": "ZeroDivisionError", "error_message": "division by zero"}),
        (
            422,
            {
                "error_name": "InvalidInput",
                "error_message": "input 'x' is missing",
                "errors": [{"field": "x", "expected": "int", "problem": "missing"}],
            },
        ),
    ],
)
def test_a_node_error_is_passed_through_with_its_status(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
    code: int,
    error: dict[str, Any],
) -> None:
    balancer, _, _ = two_nodes
    body = {"node_id": "a", "input": {"answer": {"code": code, "json": error}}}
    reply = execute(balancer, NODE_URL.format("a"), body)
    assert reply.status == code, reply.body
    assert reply.header("content-type") == "application/json"
    assert reply.json() == error


def test_answers_that_are_not_json_objects_become_balancer_errors(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, _, _ = two_nodes
    cases = [
        ({"code": 404, "text": "<html>no</html>"}, 404, "NotFound", "a: a1 answered 404"),
        ({"code": 200, "text": "[1, 2]"}, 502, "BadGateway", "not a JSON object of the node"),
        ({"code": 200, "text": ""}, 502, "BadGateway", "an empty body"),
        ({"code": 302, "json": {}}, 502, "BadGateway", "answered 302"),
    ]
    for answer, code, name, fragment in cases:
        reply = execute(balancer, NODE_URL.format("a"), {"input": {"answer": answer}})
        document = assert_balancer_error(reply, code, name, fragment)
        assert document["node"] == "a"


# -- refused calls --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "body", "headers", "field", "fragment"),
    [
        (NODE_URL.format("a"), b"{not json", {}, None, "not JSON"),
        (NODE_URL.format("a"), b'{"input": {"x": [1, NaN]}}', {}, None, "NaN, which is not a"),
        (NODE_URL.format("a"), b'{"input": {"x": -Infinity}}', {}, None, "-Infinity, which"),
        (NODE_URL.format("a"), b'{"input": {"x": 1e400}}', {}, None, "too large for a float"),
        (NODE_URL.format("a"), b"", {}, None, "empty"),
        (NODE_URL.format("a"), b"[1, 2]", {}, None, "got an array"),
        (NODE_URL.format("a"), {"input": [1, 2]}, {}, "input", "got an array"),
        (NODE_URL.format("a"), {"input": "x=1"}, {}, "input", "got a string"),
        (NODE_URL.format("a"), {"node_id": "b", "input": {}}, {}, "node_id", "executes node 'a'"),
        (NODE_URL.format("a"), {"nodeId": 7, "input": {}}, {}, "nodeId", "must be a string"),
        (ALIAS_URL.format("w"), {"alias_name": "v", "input": {}}, {}, "alias_name", "'v'"),
        (NODE_URL.format("a"), {"alias_name": "w", "input": {}}, {}, "alias_name", "unknown"),
        (NODE_URL.format("a"), {"inputs": {}}, {}, "inputs", "unknown field 'inputs'"),
        (
            NODE_URL.format("a"),
            {"folder_id": "f1", "folderId": "f1", "input": {}},
            {},
            "folderId",
            "same field",
        ),
        (
            NODE_URL.format("a"),
            {"folder_id": "f2", "input": {}},
            {"x-folder-id": "f1"},
            "folder_id",
            "x-folder-id is 'f1'",
        ),
        (NODE_URL.format("a"), {"input": {}}, {"x-node-id": "b"}, "x-node-id", "node 'b'"),
        (NODE_URL.format("a"), {"input": {}}, {"x-node-alias": "w"}, "x-node-alias", "alias"),
    ],
)
def test_a_bad_call_is_400_naming_the_field(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
    url: str,
    body: bytes | dict[str, Any],
    headers: dict[str, str],
    field: str | None,
    fragment: str,
) -> None:
    balancer, a1, b1 = two_nodes
    reply = execute(balancer, url, body, headers)
    document = assert_balancer_error(reply, 400, "BadRequest", fragment)
    assert document.get("field") == field, document
    assert a1.counts().get("/", 0) == 0 and b1.counts().get("/", 0) == 0  # nothing was sent


def test_headers_that_agree_with_the_url_are_fine(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, _, _ = two_nodes
    reply = execute(
        balancer, ALIAS_URL.format("only-a"), {}, {"x-node-alias": "datasphere.user.only-a"}
    )
    assert reply.status == 200 and reply.json()["output"]["name"] == "a1", reply.body
    reply = execute(balancer, NODE_URL.format("b"), {}, {"x-node-id": "b", "x-folder-id": "f"})
    assert reply.status == 200 and reply.json()["output"]["name"] == "b1", reply.body


@pytest.mark.parametrize(
    ("url", "kind", "name"),
    [
        (NODE_URL.format("nope"), "node", "nope"),
        (ALIAS_URL.format("nope"), "alias", "nope"),
        (ALIAS_URL.format("datasphere.user.nope"), "alias", "nope"),
    ],
)
def test_an_unknown_target_is_404_naming_it(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
    url: str,
    kind: str,
    name: str,
) -> None:
    balancer, _, _ = two_nodes
    reply = execute(balancer, url, {"input": {}})
    document = assert_balancer_error(reply, 404, "NotFound", f"no {kind} {name!r}")
    assert document[kind] == name


@pytest.mark.parametrize(
    "url",
    [
        "/datasphere/v1/nodes/a:predict",
        "/datasphere/v1/nodes/a/execute",
        "/datasphere/v2/nodes/a:execute",
        "/datasphere/v1/projects/a:execute",
    ],
)
def test_an_unknown_execute_endpoint_is_404(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess], url: str
) -> None:
    balancer, _, _ = two_nodes
    reply = execute(balancer, url, {"input": {}})
    assert_balancer_error(reply, 404, "NotFound", "no such endpoint", "aliases/<alias>:execute")


def test_a_percent_encoded_colon_and_a_query_are_understood(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, _, _ = two_nodes
    reply = execute(balancer, "/datasphere/v1/nodes/a%3Aexecute?x=1", {"input": {"v": 1}})
    assert reply.status == 200 and reply.json()["output"]["inputs"] == {"v": 1}, reply.body


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess], method: str
) -> None:
    balancer, a1, _ = two_nodes
    reply = balancer.request(method, NODE_URL.format("a"), headers=JSON, body=b"{}")
    assert_balancer_error(reply, 405, "MethodNotAllowed", method)
    assert reply.header("allow") == "POST"
    assert a1.counts().get("/", 0) == 0


def test_413_for_a_declared_length_over_the_limit(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, a1, _ = two_nodes
    with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
        sock.sendall(
            b"POST /datasphere/v1/nodes/a:execute HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (16 * MIB + 1)
        )
        code, _, body = read_response(sock)
    assert code == 413 and json.loads(body)["error_name"] == "PayloadTooLarge"
    assert a1.counts().get("/", 0) == 0


def test_413_for_a_chunked_body_over_the_limit(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> None:
    balancer = make_balancer(ProxySettings(max_body=64 * 1024))
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)})
    balancer.wait_status({"a1": "Healthy"})
    chunk = b" " * 16384  # JSON whitespace: a valid start, never finished
    with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
        sock.sendall(
            b"POST /datasphere/v1/nodes/a:execute HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(5):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        code, _, body = read_response(sock)
    assert code == 413 and json.loads(body)["status"] == 413
    assert a1.counts().get("/", 0) == 0
    assert execute(balancer, NODE_URL.format("a"), {"input": {}}).status == 200


def test_a_large_call_under_the_limit_goes_through(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, _, _ = two_nodes
    inputs = {"blob": "z" * (3 * MIB)}  # over the 256 KiB the proxy holds before it pauses
    reply = execute(balancer, NODE_URL.format("a"), {"input": inputs})
    assert reply.status == 200, reply.body[:300]
    assert reply.json()["output"]["inputs"] == inputs


# -- the body's arrival: later, pipelined, with Expect -----------------------------------------


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """count responses with content-length bodies, read one after the other."""
    stream = sock.makefile("rb")
    answers = []
    for _ in range(count):
        status = int(stream.readline().split()[1])
        length = 0
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        answers.append((status, stream.read(length)))
    return answers


def test_pipelined_calls_are_answered_in_order(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, _, _ = two_nodes
    bodies = [json.dumps({"input": {"n": n}}).encode() for n in range(3)]
    head = b"POST /datasphere/v1/nodes/a:execute HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
        sock.sendall(b"".join(head % len(body) + body for body in bodies))  # in one write
        answers = read_responses(sock, len(bodies))
    assert [(code, json.loads(body)["output"]["inputs"]) for code, body in answers] == [
        (200, {"n": n}) for n in range(3)
    ]


def test_a_body_sent_after_100_continue(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    # The call is started before its body arrives: it waits for it, then goes out.
    balancer, _, _ = two_nodes
    body = json.dumps({"input": {"e": 1}}).encode()
    with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
        sock.sendall(
            b"POST /datasphere/v1/nodes/a:execute HTTP/1.1\r\nHost: x\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        code, _, answer = read_response(sock)
    assert code == 200 and json.loads(answer)["output"]["inputs"] == {"e": 1}


# -- balancer-side failures -------------------------------------------------------------------


def test_no_healthy_instance_is_503(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, a1, _ = two_nodes
    a1.set_healthy(False)
    balancer.wait_status({"a1": "Unhealthy"})
    reply = execute(balancer, ALIAS_URL.format("only-a"), {"input": {}})
    assert_balancer_error(reply, 503, "ServiceUnavailable", "alias 'only-a'")


def test_a_connect_failure_is_retried_on_another_instance(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, a2 = start_backend("a1"), start_backend("a2")
    balancer.publish({"a": node(a1, a2, interval=30.0, unhealthy_threshold=3)})
    balancer.wait_status({"a1": "Healthy", "a2": "Healthy"})
    a2.kill()
    for index in range(4):  # round robin tries a2 within the first two calls
        reply = execute(balancer, NODE_URL.format("a"), {"input": {"i": index}})
        assert reply.status == 200 and reply.json()["output"]["name"] == "a1", reply.body
    assert balancer.instances()["a2"]["status"] == "Unhealthy"


def test_a_lone_instance_that_is_gone_is_502(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1, interval=30.0, unhealthy_threshold=3)})
    balancer.wait_status({"a1": "Healthy"})
    a1.kill()
    reply = execute(balancer, NODE_URL.format("a"), {"input": {}})
    assert_balancer_error(reply, 502, "BadGateway", "connect to")
    wait_until(lambda: balancer.inflight() == 0, "in-flight count back to 0")


def test_a_slow_node_is_504(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> None:
    balancer = make_balancer(ProxySettings(read_timeout=0.3))
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)})
    balancer.wait_status({"a1": "Healthy"})
    reply = execute(balancer, NODE_URL.format("a"), {"input": {"answer": {"ms": 3000}}})
    document = assert_balancer_error(reply, 504, "GatewayTimeout", "did not answer")
    assert document["node"] == "a"
    wait_until(lambda: balancer.inflight() == 0, "in-flight count back to 0")
    assert execute(balancer, NODE_URL.format("a"), {"input": {}}).status == 200


def test_an_answer_over_the_limit_is_502(
    make_balancer: Callable[..., BalancerHarness], start_backend: Callable[..., BackendProcess]
) -> None:
    balancer = make_balancer(ProxySettings(max_body=64 * 1024))
    a1 = start_backend("a1")
    balancer.publish({"a": node(a1)})
    balancer.wait_status({"a1": "Healthy"})
    for pad in (100 * 1024, 4 * MIB):  # one read or many
        reply = execute(balancer, NODE_URL.format("a"), {"input": {"answer": {"pad": pad}}})
        assert_balancer_error(reply, 502, "BadGateway", "byte limit")
    wait_until(lambda: balancer.inflight() == 0, "in-flight count back to 0")
    assert execute(balancer, NODE_URL.format("a"), {"input": {}}).status == 200


def test_a_client_that_leaves_mid_call_frees_the_instance(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, _, _ = two_nodes
    body = json.dumps({"input": {"answer": {"ms": 10_000}}}).encode()
    with socket.create_connection((HOST, balancer.port), timeout=5) as sock:
        sock.sendall(
            b"POST /datasphere/v1/nodes/a:execute HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        wait_until(lambda: balancer.inflight() == 1, "the call to be in flight")
    # well before the instance would answer: the balancer dropped the exchange itself
    wait_until(lambda: balancer.inflight() == 0, "in-flight count back to 0", within=4.0)
    assert execute(balancer, NODE_URL.format("a"), {"input": {}}).status == 200


def test_plain_proxying_errors_carry_the_reference_error_fields(
    two_nodes: tuple[BalancerHarness, BackendProcess, BackendProcess],
) -> None:
    balancer, _, _ = two_nodes
    reply = balancer.get("/x", {"x-node-alias": "datasphere.user.nope"})
    document = assert_balancer_error(reply, 404, "NotFound", "no alias 'nope'")
    assert document["alias"] == "nope"
