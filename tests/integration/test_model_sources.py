"""Model sources on real servers on loopback: a checkpoint from S3 (moto's server), a file
from a pinned HTTP URL, a model from an MLflow registry; applied on the real engine, fetched
once, and every failure named at its field with nothing applied."""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import json
import pickle
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes import workflow
from gitops_nodes.plan import make_plan
from gitops_nodes.render import render_text
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import load_spec
from gitops_nodes.statedir import StateDir

from .helpers import Watch, apply, git, table
from .model_servers import FileServer, Registry, S3Server, file_server, mlflow_server, s3_server
from .test_python_nodes import call

WEIGHTS = {"weights": [0.5, -1.0, 2.0], "bias": 0.1}
CODE = """
with open("files/offset.txt") as file:
    offset = float(file.read())
score = sum(w * x for w, x in zip(weights, features)) + bias + offset
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        server.put("iris/state.pkl", pickle.dumps(WEIGHTS))
        yield server


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    folder = tmp_path_factory.mktemp("www")
    (folder / "offset.txt").write_text("10")
    with file_server(folder) as server:
        yield server


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture
def sources_env(monkeypatch: pytest.MonkeyPatch, s3: S3Server, tmp_path: Path) -> Path:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    cache = tmp_path / "cache"
    monkeypatch.setenv("GITOPS_NODES_CACHE_DIR", str(cache))
    return cache


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def node(checkpoint: str, offset: str, code: str = "model/predict.py") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: gitops-nodes/v1
        kind: Node
        metadata: {{name: scorer}}
        spec:
          python:
            code: {code}
            checkpoint: {checkpoint}
            files:
              offset.txt: {offset}
            inputs: {{features: "list[float]"}}
            outputs: {{score: float}}
          healthCheck: {{path: /healthz, interval: 200ms, startTimeout: 60s}}
        """
    )


def repo(tmp_path: Path, spec: str, code: str = CODE) -> Path:
    root = tmp_path / "repo"
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "model" / "predict.py").write_text(code)
    (root / "spec.yaml").write_text(spec)
    return root


def test_s3_checkpoint_and_pinned_file_apply_answer_and_are_fetched_once(
    tmp_path: Path,
    sources_env: Path,
    s3: S3Server,
    files: FileServer,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
) -> None:
    offset = f"{{url: {files.url}/offset.txt, sha256: {sha('10')}}}"
    root = repo(tmp_path, node("s3://models/iris/state.pkl", offset))
    gets = files.counts.get("/offset.txt", 0)

    desired = load_spec(root)
    plan = make_plan(project, desired, workflow.observe(runtime, project, state))
    text = render_text(plan.to_json())
    assert "scorer checkpoint: s3://models/iris/state.pkl → sha256:" in text, text
    assert "(fetched now)" in text
    assert s3.secret not in text and s3.secret not in str(plan.to_json())
    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    (endpoint,) = table(state).nodes["scorer"].endpoints
    assert call(endpoint.port, {"features": [1, 2, 3]}) == (200, {"score": 14.6})
    assert files.counts["/offset.txt"] == gets + 1

    # the second plan and apply fetch nothing: the cache answers, nothing is rebuilt
    blobs = sorted((sources_env / "sources" / "blobs").iterdir())
    before = [path.stat().st_mtime_ns for path in blobs]
    again = make_plan(project, load_spec(root), workflow.observe(runtime, project, state))
    assert again.empty
    assert all(not source["fetched"] for source in again.to_json()["sources"])
    assert files.counts["/offset.txt"] == gets + 1
    assert [path.stat().st_mtime_ns for path in blobs] == before
    assert apply(root, runtime, project, state).report is None  # nothing to do

    # a new object under the same key is a new checkpoint: plan shows it, apply rolls it
    s3.put("iris/state.pkl", pickle.dumps({**WEIGHTS, "bias": 1.1}))
    moved = make_plan(project, load_spec(root), workflow.observe(runtime, project, state))
    assert not moved.empty
    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    (endpoint,) = table(state).nodes["scorer"].endpoints
    assert call(endpoint.port, {"features": [1, 2, 3]}) == (200, {"score": 15.6})


def _problem(root: Path) -> str:
    with pytest.raises(SpecErrors) as caught:
        load_spec(root)
    return str(caught.value)


def test_missing_denied_mismatched_and_unreachable_sources_fail_at_their_field(
    tmp_path: Path,
    sources_env: Path,
    s3: S3Server,
    files: FileServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good_offset = f"{{url: {files.url}/offset.txt, sha256: {sha('10')}}}"
    missing = _problem(repo(tmp_path, node("s3://models/nothing.pkl", good_offset)))
    assert "spec.yaml:7:" in missing and "spec.python.checkpoint" in missing, missing
    assert "node scorer" in missing and "s3://models/nothing.pkl" in missing
    assert "not found" in missing

    wrong = f"{{url: {files.url}/offset.txt, sha256: {sha('11')}}}"
    mismatch = _problem(repo(tmp_path, node("s3://models/iris/state.pkl", wrong)))
    assert "spec.python.files.offset.txt" in mismatch and "digest mismatch" in mismatch
    assert f"expected sha256:{sha('11')}" in mismatch, mismatch

    gone = f"{{url: {files.url}/gone.txt, sha256: {sha('10')}}}"
    assert "not found (HTTP 404)" in _problem(
        repo(tmp_path, node("s3://models/iris/state.pkl", gone))
    )

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key")
    denied = _problem(repo(tmp_path, node("s3://models/iris/state.pkl", good_offset)))
    assert "spec.python.checkpoint" in denied and "access denied" in denied, denied
    assert "not-the-secret-key" not in denied and s3.secret not in denied

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
    spec = node("s3://models/iris/state.pkl", "{mlflow: {model: scale, alias: champion}}")
    unreachable = _problem(repo(tmp_path, spec))
    assert "spec.python.files.offset.txt" in unreachable, unreachable
    assert "models:/scale@champion" in unreachable and "unreachable" in unreachable


MLFLOW_NODE = """\
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: scaler}
spec:
  python:
    code: model/predict.py
    files:
      model: {mlflow: {model: scale, alias: champion}}
    inputs: {x: float}
    outputs: {y: float}
  healthCheck: {path: /healthz, interval: 200ms, startTimeout: 60s}
"""
# What mlflow.pyfunc needs in the image: the client, and the pandas and numpy it imports.
PYFUNC_PACKAGES = ("mlflow-skinny", "pandas", "numpy")
RAW_CODE = """
with open("files/model/artifacts/factor.txt") as file:
    y = x * float(file.read())
"""


def test_an_mlflow_alias_move_is_a_change_plan_shows(
    tmp_path: Path,
    sources_env: Path,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    registry.move_alias("champion", 1)
    root = repo(tmp_path, MLFLOW_NODE, RAW_CODE)
    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    (endpoint,) = table(state).nodes["scaler"].endpoints
    assert call(endpoint.port, {"x": 5}) == (200, {"y": 10.0})
    plan = make_plan(project, load_spec(root), workflow.observe(runtime, project, state))
    assert plan.empty
    assert "models:/scale@champion → version 1" in render_text(plan.to_json())
    assert [s["fetched"] for s in plan.to_json()["sources"]] == [False]  # the cache had it

    registry.move_alias("champion", 2)  # a promotion: no commit, no change to the repo
    plan = make_plan(project, load_spec(root), workflow.observe(runtime, project, state))
    text = render_text(plan.to_json())
    assert "models:/scale@champion → version 2" in text and "(fetched now)" in text, text
    assert "Plan: 1 to add, 0 to change, 1 to destroy." in text, text
    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    (endpoint,) = table(state).nodes["scaler"].endpoints
    assert call(endpoint.port, {"x": 5}) == (200, {"y": 15.0})


def test_watch_rolls_out_an_mlflow_alias_move_without_a_commit(
    tmp_path: Path,
    sources_env: Path,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    watch: Callable[[str], Watch],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    registry.move_alias("champion", 1)
    origin = tmp_path / "origin"  # the watch fixture's repository, committed by start()
    (origin / "model").mkdir(parents=True)
    (origin / "model" / "predict.py").write_text(RAW_CODE)
    watcher = watch(MLFLOW_NODE)

    def answer() -> Any:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", watcher.port, timeout=5)
            connection.request("POST", "/nodes/scaler/", json.dumps({"x": 5}))
            response = connection.getresponse()
            return json.loads(response.read()).get("y") if response.status == 200 else None
        except (OSError, ValueError, http.client.HTTPException):
            return None

    watcher.wait(lambda: answer() == 10.0, "version 1 served", 180)
    commits = git(origin, "rev-list", "--count", "HEAD")
    registry.move_alias("champion", 2)
    watcher.wait(lambda: answer() == 15.0, "the alias move rolled out", 180)
    assert git(origin, "rev-list", "--count", "HEAD") == commits  # no commit made it


def test_an_mlflow_model_is_loaded_as_pyfunc_into_its_variable(
    tmp_path: Path,
    sources_env: Path,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    registry.move_alias("champion", 2)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in PYFUNC_PACKAGES]
    spec = MLFLOW_NODE.replace(
        "    files:\n      model: {mlflow: {model: scale, alias: champion}}\n",
        "    models:\n      model: {mlflow: {model: scale, alias: champion}}\n"
        f"    packages: {json.dumps(pins)}\n",
    )
    root = repo(tmp_path, spec, "y = float(model.predict([x])[0])\n")
    plan = make_plan(project, load_spec(root), workflow.observe(runtime, project, state))
    assert plan.warnings == (), plan.warnings  # the model's requirements are the image's

    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    (endpoint,) = table(state).nodes["scaler"].endpoints
    assert call(endpoint.port, {"x": 5}) == (200, {"y": 15.0})
