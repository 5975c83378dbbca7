"""The execute API against real python node containers behind `gitops-nodes serve`, called
the way the reference platform's documented clients call it: plain HTTP, its headers, its
bodies ({"folder_id", "node_id" | "alias_name", "input"} in, {"output"} or an error out)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir

from .helpers import alias_yaml, apply, python_node

FOLDER = "b1gexamplefolder"
# What the reference's documentation shows its clients send.
HEADERS = {
    "content-type": "application/json",
    "authorization": "Bearer t0ken",
    "x-folder-id": FOLDER,
}


def post(port: int, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, json.dumps(body), headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def execute(port: int, kind: str, name: str, inputs: dict[str, Any]) -> tuple[int, Any]:
    field = "node_id" if kind == "nodes" else "alias_name"
    body = {"folder_id": FOLDER, field: name, "input": inputs}
    return post(port, f"/datasphere/v1/{kind}/{name}:execute", body, HEADERS)


def wait_until_served(port: int, path: str) -> None:
    """Poll the execute route until an instance answers (its health check passed)."""
    deadline = time.monotonic() + 30
    while True:
        status, body = post(port, path, {"input": {"features": [0.0]}}, HEADERS)
        if status == 200:
            return
        assert status == 503 and time.monotonic() < deadline, (status, body)
        time.sleep(0.1)


def test_execute_routes_answer_outputs_and_the_nodes_errors(
    model_repo: Callable[..., Path],
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve: Callable[[], int],
) -> None:
    with_traceback = python_node("scorer-tb").replace(
        "outputs: {score: float, calls: int}",
        "outputs: {score: float, calls: int}\n    traceback: true",
    )
    spec = python_node("scorer") + with_traceback + alias_yaml("scoring", {"scorer": 1})
    root = model_repo(spec)
    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    port = serve()
    wait_until_served(port, "/datasphere/v1/nodes/scorer:execute")
    wait_until_served(port, "/datasphere/v1/nodes/scorer-tb:execute")

    # Outputs, wrapped, through both routes; the alias also by its reference name.
    status, body = execute(port, "nodes", "scorer", {"features": [1, 2, 3]})
    assert status == 200 and list(body) == ["output"], body
    assert body["output"]["score"] == 4.6
    calls = body["output"]["calls"]
    status, body = execute(port, "aliases", "scoring", {"features": [1, 2, 3]})
    assert (status, body) == (200, {"output": {"score": 4.6, "calls": calls + 1}})
    status, body = post(
        port,
        "/datasphere/v1/aliases/scoring:execute",
        {"folderId": FOLDER, "aliasName": "datasphere.user.scoring", "input": {"features": [1]}},
        HEADERS,
    )
    assert status == 200 and body["output"]["calls"] == calls + 2, body

    # The node-api form of the same call: the header picks the alias, flat JSON both ways.
    status, body = post(
        port, "/", {"features": [1]}, {**HEADERS, "x-node-alias": "datasphere.user.scoring"}
    )
    assert status == 200 and body == {"score": 0.6, "calls": calls + 3}, body

    # A user-code error: no traceback unless the node's spec allows it.
    status, body = execute(port, "nodes", "scorer", {"features": [-1.0]})
    assert status == 500, body
    assert body == {"error_name": "ValueError", "error_message": "negative first feature"}
    status, body = execute(port, "nodes", "scorer-tb", {"features": [-1.0]})
    assert status == 500, body
    assert body["error_name"] == "ValueError"
    assert body["error_message"] == "negative first feature"
    traceback = body["traceback"]
    assert isinstance(traceback, list) and all(isinstance(line, str) for line in traceback)
    assert any("predict.py" in line for line in traceback), traceback
    assert "ValueError: negative first feature" in traceback[-1], traceback

    # Inputs the node refuses: its 422 comes through as it is.
    status, body = execute(port, "aliases", "scoring", {"features": "three"})
    assert status == 422 and body["error_name"] == "InvalidInput", body
    assert body["errors"][0]["field"] == "features"

    # The balancer's own refusals speak the same error fields.
    status, body = execute(port, "nodes", "missing", {"features": [1]})
    assert status == 404 and body["error_name"] == "NotFound" and body["node"] == "missing"
    status, body = post(
        port,
        "/datasphere/v1/nodes/scorer:execute",
        {"folder_id": FOLDER, "node_id": "scorer-tb", "input": {}},
        HEADERS,
    )
    assert status == 400 and body["error_name"] == "BadRequest", body
    assert body["field"] == "node_id" and "scorer-tb" in body["error_message"]
