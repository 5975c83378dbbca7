"""A batched python node on the real engine, outputs that are never silently wrong, and a GPU
request as the engine receives it (and refuses it: the machines this runs on have no GPU)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.apply import Outcome
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir
from tests.unit.test_pynode_server import read_answers

from .helpers import alias_yaml, apply, node_yaml, table

# Each request's score, and in `calls` the size of the batch it ran in. A negative first
# feature raises (failing its whole batch); an empty feature list makes `score` one short.
BATCH_CODE = """
runs = globals().get("runs", 0) + 1
if any(f and f[0] < 0 for f in features):
    raise ValueError("negative first feature")
score = [sum(w * x for w, x in zip(weights, f)) + bias for f in features]
if any(not f for f in features):
    score = score[:-1]
calls = [len(features)] * len(features)
"""

BATCHED_NODE = """
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: scorer}
spec:
  python:
    code: model/predict.py
    checkpoint: model/state.pkl
    inputs: {features: "list[float]"}
    outputs: {score: float, calls: int}
    batch: {maxSize: 16, maxDelay: 1s}
  healthCheck: {path: /healthz, interval: 200ms, startTimeout: 20s}
---
"""


def post(features: list[float]) -> bytes:
    body = json.dumps({"features": features}).encode()
    return b"POST / HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def together(port: int, *features: list[float]) -> list[tuple[int, Any]]:
    """Requests sent in one write on one connection (so read together); their answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"".join(post(f) for f in features))
        return read_answers(sock, len(features))


def score(features: list[float]) -> float:
    return sum(w * x for w, x in zip([0.5, -1.0, 2.0], features, strict=False)) + 0.1


def test_a_batched_node_answers_each_request_its_own_element(
    model_repo: Callable[..., Path],
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve: Callable[[], int],
) -> None:
    root = model_repo(BATCHED_NODE + alias_yaml("scorer", {"scorer": 1}), code=BATCH_CODE)
    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    (endpoint,) = table(state).nodes["scorer"].endpoints
    port = endpoint.port

    # Read together: one run of the code, each request its own score, the batch's size 8.
    rows = [[float(n), 1.0, 2.0] for n in range(8)]
    answers = together(port, *rows)
    assert answers == [(200, {"score": score(r), "calls": 8}) for r in rows]
    # More than maxSize read together: batches of 16 and 4, in order.
    rows = [[float(n), 0.0, 0.0] for n in range(20)]
    answers = together(port, *rows)
    assert [body["score"] for _, body in answers] == [score(r) for r in rows]
    assert [body["calls"] for _, body in answers] == [16] * 16 + [4] * 4

    # maxDelay (1 s) bounds the wait; an idle instance runs a lone request at once, so three
    # in a row take far less than the three seconds they would if each waited for it.
    began = time.monotonic()
    for n in range(3):
        assert together(port, [float(n)]) == [(200, {"score": score([float(n)]), "calls": 1})]
    assert time.monotonic() - began < 1.5

    # An exception fails exactly the requests of its batch; the next batch is served.
    failed = together(port, [1.0], [-1.0], [2.0])
    assert [status for status, _ in failed] == [500, 500, 500]
    assert failed[0][1] == failed[1][1] == failed[2][1]
    assert failed[0][1]["error_name"] == "ValueError"
    assert together(port, [3.0]) == [(200, {"score": score([3.0]), "calls": 1})]

    # An output one short: every request of the batch is a 500 naming it.
    short = together(port, [1.0], [])
    for status, body in short:
        assert status == 500 and body["error_name"] == "InvalidOutput"
        assert "output 'score': expected a list of 2 values" in body["error_message"]

    # An infinite score: a 500 naming the output, for that request only (never 200 + null).
    answers = together(port, [1.0], [0.0, 0.0, 1e308])
    assert answers[0] == (200, {"score": score([1.0]), "calls": 2})
    status, body = answers[1]
    assert status == 500 and body["error_name"] == "InvalidOutput"
    assert "output 'score' is inf" in body["error_message"]

    # A number too large for a float in a request: a 400 saying so.
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        body = b'{"features": [1e400]}'
        sock.sendall(b"POST / HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        ((status, answer),) = read_answers(sock, 1)
    assert status == 400 and "too large for a float" in answer["error_message"]

    # Through the alias, 16 callers at once: each gets its own answer, and their requests
    # reach the instance together (the balancer does not send them one by one): batches form.
    balancer = serve()
    seen: list[tuple[int, int, bool]] = []  # status, batch size, the score was its own

    def caller(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", balancer, timeout=20)
        try:
            for step in range(5):
                features = [float(number), float(step), 1.0]
                connection.request("POST", "/aliases/scorer/", json.dumps({"features": features}))
                response = connection.getresponse()
                answer = json.loads(response.read())
                own = answer.get("score") == score(features)
                seen.append((response.status, answer.get("calls", 0), own))
        finally:
            connection.close()

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(seen) == 80 and {(status, own) for status, _, own in seen} == {(200, True)}
    assert max(calls for _, calls, _ in seen) > 1


def test_a_gpu_request_reaches_the_engine_and_a_host_without_gpus_fails_clearly(
    app_repo: Callable[[str], Path],
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = app_repo(node_yaml("web", "1") + alias_yaml("front", {"web": 1}))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    before = {i.name for i in runtime.list_instances(project)}
    table_before = table(state)

    # Read back what the engine was given, between the container's creation and its start.
    seen: list[Any] = []
    start = runtime.api.start

    def start_and_record(container: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(runtime.api.inspect_container(container)["HostConfig"]["DeviceRequests"])
        return start(container, *args, **kwargs)

    monkeypatch.setattr(runtime.api, "start", start_and_record)
    gpu = node_yaml("trainer", "1", extra_spec="  resources: {gpus: 1}\n")
    root = app_repo(node_yaml("web", "1") + gpu + alias_yaml("front", {"web": 1}))
    run = apply(root, runtime, project, state)

    assert len(seen) == 1  # created once, with the request the engine keeps
    (request,) = seen[0]
    assert (request["Count"], request["Capabilities"]) == (1, [["gpu"]])
    assert run.report is not None and not run.report.ok
    (failed,) = run.report.with_outcome(Outcome.FAILED)
    assert failed.step.id == "create trainer/0"
    assert "node trainer asks for GPUs (resources.gpus: 1)" in failed.detail
    assert "NVIDIA Container Toolkit" in failed.detail
    assert "could not select device driver" in failed.detail  # the engine's own words
    # Nothing else was touched: the other node's container, the table, no container left.
    assert {i.name for i in runtime.list_instances(project)} == before
    assert table(state) == table_before
