"""Python nodes on the real engine: built, applied, called, rolled, and refused when broken."""

from __future__ import annotations

import http.client
import json
import select
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes import workflow
from gitops_nodes.apply import Outcome
from gitops_nodes.plan import Step, make_plan
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import load_spec
from gitops_nodes.statedir import StateDir

from .helpers import alias_yaml, apply, python_node, table


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket, as the balancer reaches a python node on this host."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(10)
        sock.connect(self.socket_path)
        self.sock = sock


def call(port: int | str, body: Any) -> tuple[int, Any]:
    """POST / on the instance's port, or on its Unix socket (a path)."""
    connection = (
        UnixConnection(port)
        if isinstance(port, str)
        else http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    )
    connection.request("POST", "/", json.dumps(body), {"content-type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def endless_head(port: int) -> bytes:
    """Send a header that never ends, 8 KiB at a time (at most 4 MiB), until an answer can be
    read; what the instance answers until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\nx-long: ")
        for _ in range(512):
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(b"a" * 8192)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def port_of(state: StateDir, node: str) -> int:
    (endpoint,) = table(state).nodes[node].endpoints
    return endpoint.port


def test_a_python_node_is_built_applied_and_answers(
    model_repo: Callable[..., Path], runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = model_repo(python_node("scorer") + alias_yaml("scorer", {"scorer": 1}))
    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    assert [r.step.step for r in run.report.results].count(Step.BUILD) == 1
    port = port_of(state, "scorer")

    assert call(port, {"features": [1, 2, 3]}) == (200, {"score": 4.6, "calls": 1})
    assert call(port, {"features": [1, 2, 3]})[1]["calls"] == 2  # state persists

    status, body = call(port, {"features": "three"})
    assert status == 422 and body["errors"][0]["field"] == "features"
    status, body = call(port, {"features": [-1.0]})
    assert status == 500 and body["error_name"] == "ValueError"
    assert "traceback" not in body
    # the 422 never ran the code; the one that raised did: calls went 1, 2, 3, now 4
    assert call(port, {"features": [0, 0, 0]}) == (200, {"score": 0.1, "calls": 4})
    # Any local client reaches the published port: a head without end is refused, not held.
    assert endless_head(port).startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    assert call(port, {"features": [0, 0, 0]}) == (200, {"score": 0.1, "calls": 5})

    plan = make_plan(project, load_spec(root), workflow.observe(runtime, project, state))
    assert plan.empty  # unchanged: not rebuilt, not replaced


def test_a_new_checkpoint_rebuilds_and_rolls_the_node(
    model_repo: Callable[..., Path], runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    spec = python_node("scorer") + alias_yaml("scorer", {"scorer": 1})
    root = model_repo(spec)
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    before = runtime.list_instances(project)
    # The table lists the instance's Unix socket, which serves as its port does.
    (first,) = table(state).nodes["scorer"].endpoints
    assert first.socket is not None and first.socket == before[0].socket
    assert call(first.socket, {"features": [1, 2, 3]}) == (200, {"score": 4.6, "calls": 1})

    model_repo(spec, weights=[1.0, 1.0, 1.0])
    plan = make_plan(project, load_spec(root), workflow.observe(runtime, project, state))
    assert [s.step for s in plan.steps()].count(Step.BUILD) == 1
    assert plan.diff.nodes[0].action.value == "-/+"
    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    assert call(port_of(state, "scorer"), {"features": [1, 2, 3]})[1]["score"] == 6.1
    assert {i.name for i in runtime.list_instances(project)}.isdisjoint(i.name for i in before)
    (second,) = table(state).nodes["scorer"].endpoints
    assert second.socket is not None and second.socket != first.socket
    assert call(second.socket, {"features": [1, 2, 3]})[1]["score"] == 6.1
    assert not Path(first.socket).parent.exists()  # removed with its instance


def test_a_broken_checkpoint_fails_apply_and_moves_no_alias(
    model_repo: Callable[..., Path], runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = model_repo(python_node("v1") + alias_yaml("scorer", {"v1": 1}))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    aliases_before = table(state).aliases

    (root / "model" / "broken.pkl").write_bytes(b"not a pickle")
    v2 = python_node("v2", checkpoint="model/broken.pkl")
    model_repo(python_node("v1") + v2 + alias_yaml("scorer", {"v2": 1}))
    run = apply(root, runtime, project, state)
    assert run.report is not None and not run.report.ok
    failed = run.report.with_outcome(Outcome.FAILED)
    assert [r.step.id for r in failed] == ["wait v2/0"]
    assert "checkpoint" in failed[0].detail
    assert table(state).aliases == aliases_before


def test_an_output_the_code_never_mentions_is_a_spec_error(
    model_repo: Callable[..., Path],
) -> None:
    spec = python_node("scorer").replace(
        "outputs: {score: float, calls: int}", "outputs: {score: float, calls: int, label: str}"
    )
    root = model_repo(spec)
    with pytest.raises(SpecErrors) as caught:
        load_spec(root)
    (problem,) = caught.value.problems
    assert (problem.file, problem.field) == ("spec.yaml", "spec.python.code")
    assert "label" in problem.message and "model/predict.py" in problem.message
