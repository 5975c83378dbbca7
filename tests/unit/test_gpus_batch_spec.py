"""resources.gpus and python.batch in the spec: validated, hashed, shown in plan, and turned
into what each runtime asks of its engine (without Docker: the engine's part is in
tests/integration/test_batching_gpus.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gitops_nodes.errors import RuntimeFailure
from gitops_nodes.live import LiveState
from gitops_nodes.plan import make_plan
from gitops_nodes.render import render_text
from gitops_nodes.runtime.docker import device_requests
from gitops_nodes.runtime.swarm_spec import node_service_spec
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.hashing import InstanceConfig, spec_hash
from gitops_nodes.spec.load import load_spec

WriteRepo = Callable[[dict[str, str]], Path]

WEB = """
apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: web
spec:
  image:
    name: busybox
    port: 8080
"""

PYTHON = """
apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: scorer
spec:
  python:
    code: predict.py
    inputs: {x: float}
    outputs: {y: float}
"""


def gpus_repo(write_repo: WriteRepo, gpus: str) -> Path:
    return write_repo({"x.yaml": WEB + f"  resources:\n    gpus: {gpus}\n"})


@pytest.mark.parametrize(
    ("written", "value"),
    [("1", 1), ("all", "all"), ('["0", "GPU-3a23c669-1f69"]', ("0", "GPU-3a23c669-1f69"))],
)
def test_gpus_a_count_all_or_device_ids(write_repo: WriteRepo, written: str, value: object) -> None:
    node = load_spec(gpus_repo(write_repo, written)).nodes["web"]
    assert node.config.gpus == value
    assert InstanceConfig.from_dict(node.config.as_dict()) == node.config  # the label's copy


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("0", "expected a number of GPUs from 1 to 64"),
        ("true", "expected a number of GPUs (1), all, or a list of device ids"),
        ("[0, 1]", "expected GPU device ids"),
        ('["0", "0"]', "expected each GPU device id once"),
        ("[]", "expected a number of GPUs (1), all, or a list of device ids"),
    ],
)
def test_bad_gpus_are_spec_errors_at_the_field(
    write_repo: WriteRepo, written: str, expected: str
) -> None:
    with pytest.raises(SpecErrors) as caught:
        load_spec(gpus_repo(write_repo, written))
    (problem,) = caught.value.problems
    assert problem.field == "spec.resources.gpus"
    assert expected in problem.message


def test_gpus_are_in_the_spec_hash_and_absent_when_unset(write_repo: WriteRepo) -> None:
    without = load_spec(write_repo({"x.yaml": WEB})).nodes["web"]
    assert "gpus" not in without.config.as_dict()  # nodes without GPUs keep their hash
    with_one = load_spec(gpus_repo(write_repo, "1")).nodes["web"]
    with_two = load_spec(gpus_repo(write_repo, "2")).nodes["web"]
    assert len({without.spec_hash, with_one.spec_hash, with_two.spec_hash}) == 3
    assert with_one.spec_hash == spec_hash(replace(without.config, gpus=1))


def test_plan_shows_the_gpus(write_repo: WriteRepo) -> None:
    state = load_spec(gpus_repo(write_repo, '["0", "1"]'))
    text = render_text(make_plan("p", state, LiveState("p")).to_json())
    (line,) = [line for line in text.splitlines() if "resources.gpus" in line]
    assert line.split() == ["+", "resources.gpus", "=", '["0",', '"1"]']


def test_docker_device_requests_as_docker_run_gpus() -> None:
    base = InstanceConfig(image="i", port=1, command=None, env=(), cpus=None, memory=None)
    assert device_requests(base) is None
    (count,) = device_requests(replace(base, gpus=2)) or []
    assert (count["Count"], count["Capabilities"]) == (2, [["gpu"]])
    (every,) = device_requests(replace(base, gpus="all")) or []
    assert every["Count"] == -1  # what `docker run --gpus all` sends
    (ids,) = device_requests(replace(base, gpus=("0", "1"))) or []
    assert ids["DeviceIDs"] == ["0", "1"] and ids["Capabilities"] == [["gpu"]]


def test_swarm_reserves_gpus_as_generic_resources(write_repo: WriteRepo) -> None:
    node = load_spec(gpus_repo(write_repo, "2")).nodes["web"]
    spec = node_service_spec("p", node, "busybox", "p--net")
    assert spec["TaskTemplate"]["Resources"]["Reservations"] == {
        "GenericResources": [{"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}}]
    }
    node = replace(node, config=replace(node.config, gpus=("0",)))
    spec = node_service_spec("p", node, "busybox", "p--net")
    assert spec["TaskTemplate"]["Resources"]["Reservations"]["GenericResources"] == [
        {"NamedResourceSpec": {"Kind": "gpu", "Value": "0"}}
    ]
    node = replace(node, config=replace(node.config, gpus="all"))
    with pytest.raises(RuntimeFailure, match=r"node web: resources\.gpus: all cannot be asked"):
        node_service_spec("p", node, "busybox", "p--net")


def python_repo(write_repo: WriteRepo, extra: str = "") -> Path:
    return write_repo({"x.yaml": PYTHON + extra, "predict.py": "y = x\n"})


def test_batch_goes_into_the_node_config_and_the_image_tag(write_repo: WriteRepo) -> None:
    plain = load_spec(python_repo(write_repo)).nodes["scorer"]
    assert plain.build is not None and plain.build.python is not None
    assert "batch" not in json.loads(plain.build.python.config)  # unbatched: image unchanged
    extra = "    batch: {maxSize: 32, maxDelay: 5ms, numpy: true}\n    allowNonFinite: true\n"
    batched = load_spec(python_repo(write_repo, extra)).nodes["scorer"]
    assert batched.build is not None and batched.build.python is not None
    config = json.loads(batched.build.python.config)
    assert config["batch"] == {"maxSize": 32, "maxDelay": 0.005, "numpy": True}
    assert config["allowNonFinite"] is True
    assert batched.config.image != plain.config.image
    assert batched.spec_hash != plain.spec_hash


@pytest.mark.parametrize(
    ("batch", "field", "expected"),
    [
        ("{maxSize: 0}", "spec.python.batch.maxSize", "expected a value ≥ 1, got 0"),
        ("{maxSize: 5000}", "spec.python.batch.maxSize", "expected a value ≤ 4096, got 5000"),
        ("{maxSize: 8, maxDelay: 2s}", "spec.python.batch.maxDelay", "from 0s to 1s"),
        ("{maxDelay: 2ms}", "spec.python.batch.maxSize", "required"),
    ],
)
def test_bad_batch_settings_are_spec_errors(
    write_repo: WriteRepo, batch: str, field: str, expected: str
) -> None:
    with pytest.raises(SpecErrors) as caught:
        load_spec(python_repo(write_repo, f"    batch: {batch}\n"))
    (problem,) = caught.value.problems
    assert problem.field == field
    assert expected in problem.message
