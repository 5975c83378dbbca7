"""Loading a repository of YAML: what a good repo becomes, and the exact words for a bad one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import gitops_nodes.spec.load as load_module
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import SpecLoader, load_spec
from gitops_nodes.spec.models import HealthCheck, parse_duration, parse_size
from gitops_nodes.spec.state import Source

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

GOOD_NODES = """
# two nodes in one file; the second is built from a folder next to this file
apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: web
spec:
  image:
    name: busybox:1.36
    port: 8080
---
apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: api
  description: built from nodes/app
spec:
  image:
    build: app
    port: 9000
    command: ["python3", "server.py"]
  instances: 3
  minHealthy: 2
  env:
    PORT: "8080"
    DEBUG: "true"
    QUIET: "false"
    RATIO: "0.5"
    NAME: api
  resources:
    cpus: 1
    memory: 256Mi
  healthCheck:
    path: /healthz
    interval: 500ms
    timeout: 2s
    startTimeout: 1m30s
    unhealthyThreshold: 5
"""

GOOD_ALIAS = """
apiVersion: gitops-nodes/v1
kind: Alias
metadata:
  name: front
spec:
  nodes:
    - node: web
      weight: 90
    - node: api
"""

DEEP = """
---
---
apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: deep
spec:
  image: {name: "registry.local:5000/deep:2.0", port: 80}
"""


def _good_repo(write_repo: WriteRepo) -> Path:
    return write_repo(
        {
            "nodes/web.yaml": GOOD_NODES,
            "nodes/app/Dockerfile": "FROM scratch\n",
            "aliases/front.yml": GOOD_ALIAS,
            "deep/er/more.yaml": DEEP,
            "docker-compose.yml": "services:\n  db:\n    image: postgres\n",
            "config.yaml": "- just\n- a list\n",
            # hidden folders are skipped, even when their YAML is broken or would clash
            ".github/workflows/ci.yaml": "on: [push\n",
            ".hidden/dup.yaml": WEB,
        }
    )


def _problems(write_repo: WriteRepo, files: dict[str, str]) -> list[str]:
    root = write_repo(files)
    with pytest.raises(SpecErrors) as caught:
        load_spec(root)
    return [str(problem) for problem in caught.value.problems]


# --- a good repository ---------------------------------------------------------------------


def test_good_repo_finds_every_document_and_ignores_foreign_and_hidden_files(
    write_repo: WriteRepo,
) -> None:
    state = load_spec(_good_repo(write_repo))

    assert list(state.nodes) == ["api", "deep", "web"]
    assert list(state.aliases) == ["front"]
    assert state.files == ("aliases/front.yml", "deep/er/more.yaml", "nodes/web.yaml")
    assert state.nodes["web"].source == Source("nodes/web.yaml", 0)
    assert state.nodes["api"].source == Source("nodes/web.yaml", 1)
    assert state.nodes["deep"].source == Source("deep/er/more.yaml", 1)  # after an empty one
    assert state.aliases["front"].routes == (("web", 90), ("api", 100))
    assert state.aliases["front"].source == Source("aliases/front.yml", 0)


def test_defaults_are_applied(write_repo: WriteRepo) -> None:
    web = load_spec(_good_repo(write_repo)).nodes["web"]

    assert web.instances == 1
    assert web.min_healthy == 1
    assert web.health_check == HealthCheck()
    check = web.health_check
    assert (check.path, check.port) == (None, None)
    assert (check.interval, check.timeout, check.start_timeout) == (2.0, 1.0, 60.0)
    assert (check.healthy_threshold, check.unhealthy_threshold) == (1, 3)
    assert web.build is None
    assert web.config.image == "busybox:1.36"
    assert web.config.command is None
    assert web.config.env == ()
    assert (web.config.cpus, web.config.memory) == (None, None)


def test_values_are_parsed_and_coerced(write_repo: WriteRepo) -> None:
    api = load_spec(_good_repo(write_repo)).nodes["api"]

    assert (api.instances, api.min_healthy) == (3, 2)
    assert api.config.port == 9000
    assert api.config.command == ("python3", "server.py")
    assert api.config.env == (
        ("DEBUG", "true"),
        ("NAME", "api"),
        ("PORT", "8080"),
        ("QUIET", "false"),
        ("RATIO", "0.5"),
    )
    assert api.config.cpus == 1.0
    assert api.config.memory == 256 * 2**20
    check = api.health_check
    assert check.path == "/healthz"
    assert (check.interval, check.timeout, check.start_timeout) == (0.5, 2.0, 90.0)
    assert check.unhealthy_threshold == 5


def test_build_path_is_resolved_from_the_yaml_file_and_stored_from_the_repo_root(
    write_repo: WriteRepo,
) -> None:
    api = load_spec(_good_repo(write_repo)).nodes["api"]

    assert api.build is not None
    assert api.build.context == "nodes/app"
    assert api.build.dockerfile == "Dockerfile"
    assert api.build.tag.startswith("gitops-nodes/build:")
    assert api.config.image == api.build.tag


@pytest.mark.parametrize(
    ("spec_file", "build", "context"),
    [
        ("nodes/x.yaml", ".", "nodes"),
        ("nodes/x.yaml", "../shared/app", "shared/app"),
        ("x.yaml", "shared/app", "shared/app"),
        ("a/b/c/x.yaml", "../../../shared/app/", "shared/app"),
    ],
)
def test_build_paths_relative_to_their_file(
    write_repo: WriteRepo, spec_file: str, build: str, context: str
) -> None:
    text = WEB.replace("name: busybox", f"build: {build}")
    root = write_repo(
        {
            spec_file: text,
            "shared/app/Dockerfile": "FROM scratch\n",
            "nodes/Dockerfile": "FROM scratch\n",
        }
    )

    node = load_spec(root).nodes["web"]

    assert node.build is not None
    assert node.build.context == context


def test_equal_build_folders_share_one_tag_and_a_change_gives_a_new_one(
    write_repo: WriteRepo,
) -> None:
    text = WEB.replace("name: busybox", "build: app")
    root = write_repo({"x.yaml": text, "app/Dockerfile": "FROM scratch\n"})
    first = load_spec(root).nodes["web"].config.image
    assert load_spec(root).nodes["web"].config.image == first

    (root / "app" / "server.py").write_text("print('v2')\n")

    assert load_spec(root).nodes["web"].config.image != first


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1m30s", 90.0), ("1h", 3600.0), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "size"),
    [("256Mi", 256 * 2**20), ("1Gi", 2**30), ("300M", 300_000_000), ("64k", 64_000), (4096, 4096)],
)
def test_sizes(value: str | int, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("text", ["9" * 400 + "s", "1" + "0" * 400 + "h"])
def test_a_duration_too_long_to_count_is_refused_not_infinite(text: str) -> None:
    with pytest.raises(ValueError, match="at most 24h"):
        parse_duration(text)


@pytest.mark.parametrize("value", ["9" * 400 + "Mi", "9" * 400, 10**400, "1025Gi"])
def test_a_size_too_large_is_refused_not_an_overflow(value: str | int) -> None:
    with pytest.raises(ValueError, match="at most 1024Gi"):
        parse_size(value)


def test_a_long_written_size_is_exact() -> None:
    assert parse_size("1.5" + "0" * 400 + "Gi") == 3 * 2**29
    assert parse_size("1024Gi") == 2**40


def test_sizes_and_durations_through_the_loader(write_repo: WriteRepo) -> None:
    text = WEB + "  resources:\n    memory: 1Gi\n  healthCheck:\n    timeout: 1m\n"
    node = load_spec(write_repo({"x.yaml": text})).nodes["web"]
    assert node.config.memory == 2**30
    assert node.health_check.timeout == 60.0

    text = WEB + "  resources:\n    memory: 268435456\n"
    assert load_spec(write_repo({"x.yaml": text})).nodes["web"].config.memory == 268435456


def test_a_size_string_of_zero_bytes_is_refused(write_repo: WriteRepo) -> None:
    text = WEB + "  resources:\n    memory: '0'\n"
    with pytest.raises(SpecErrors):
        load_spec(write_repo({"x.yaml": text}))


def test_memory_below_dockers_minimum_is_refused(write_repo: WriteRepo) -> None:
    text = WEB + "  resources:\n    memory: 1Mi\n"
    with pytest.raises(SpecErrors) as caught:
        load_spec(write_repo({"x.yaml": text}))
    assert [str(p) for p in caught.value.problems] == [
        "x.yaml:10:13: spec.resources.memory: expected at least 6Mi (Docker's smallest memory "
        "limit), got 1048576 bytes"
    ]


def test_a_node_and_an_alias_may_share_a_name(write_repo: WriteRepo) -> None:
    alias = GOOD_ALIAS.replace("name: front", "name: web").replace("    - node: api\n", "")
    state = load_spec(write_repo({"a.yaml": WEB, "b.yaml": alias}))
    assert list(state.nodes) == ["web"]
    assert list(state.aliases) == ["web"]


def test_an_empty_repo_is_an_empty_state(write_repo: WriteRepo) -> None:
    state = load_spec(write_repo({"README.yaml": "title: not ours\n"}))
    assert (dict(state.nodes), dict(state.aliases), state.files) == ({}, {}, ())


def test_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SpecErrors, match="expected a folder holding YAML files"):
        load_spec(tmp_path / "nowhere")


# --- a bad repository: one problem each, in the exact words users read ---------------------


def _node(spec: str, *, head: str = "apiVersion: gitops-nodes/v1\nkind: Node\n") -> str:
    """A Node document whose spec lines start at line 6 (metadata.name is line 4: 'web')."""
    return head + "metadata:\n  name: web\nspec:\n" + spec


def _alias(nodes: str) -> str:
    """An Alias document whose spec.nodes items start at line 7."""
    return (
        "apiVersion: gitops-nodes/v1\nkind: Alias\nmetadata:\n  name: front\nspec:\n  nodes:\n"
        + nodes
    )


IMAGE = "  image:\n    name: busybox\n    port: 8080\n"  # lines 6-8

NODE_FIELDS = (
    "image, python, instances, minHealthy, env, secretFiles, resources, healthCheck, endpoint, "
    "maintenanceLimit, suspended, access, telemetry, prefixRewrite, logs"
)
HEALTH_FIELDS = "path, port, interval, timeout, healthyThreshold, unhealthyThreshold, startTimeout"
DNS = (
    "expected a DNS label: lowercase letters, digits and '-', starting and ending with a "
    "letter or digit, at most 63 characters"
)
LONG = "a" * 64

BAD_NODES = {
    "unknown field": (
        _node(IMAGE + "  replicas: 2\n"),
        f"s.yaml:9:3: spec.replicas: unknown field; expected one of: {NODE_FIELDS}",
    ),
    "unknown nested field": (
        _node(IMAGE + "  healthCheck:\n    retries: 3\n"),
        f"s.yaml:10:5: spec.healthCheck.retries: unknown field; expected one of: {HEALTH_FIELDS}",
    ),
    "unknown top-level field": (
        "labels: {}\n" + _node(IMAGE),
        "s.yaml:1:1: labels: unknown field; expected one of: apiVersion, kind, metadata, spec",
    ),
    "missing field": (
        _node("  image:\n    name: busybox\n"),
        "s.yaml:7:5: spec.image.port: required field is missing",
    ),
    "missing section": (
        "apiVersion: gitops-nodes/v1\nkind: Node\nspec:\n" + IMAGE,
        "s.yaml:1:1: metadata: required field is missing",
    ),
    "wrong type: string for integer": (
        _node(IMAGE + "  instances: two\n"),
        "s.yaml:9:14: spec.instances: expected an integer, got 'two'",
    ),
    "wrong type: quoted port": (
        _node("  image:\n    name: busybox\n    port: '8080'\n"),
        "s.yaml:8:11: spec.image.port: expected an integer, got '8080'",
    ),
    "wrong type: list for mapping": (
        _node(IMAGE + "  env: [A, B]\n"),
        "s.yaml:9:8: spec.env: expected a mapping",
    ),
    "wrong type: null env value": (
        _node(IMAGE + "  env:\n    DEBUG:\n"),
        's.yaml:10:11: spec.env.DEBUG: expected a string, YAML read None; quote it: DEBUG: "..."',
    ),
    "instances 0": (
        _node(IMAGE + "  instances: 0\n"),
        "s.yaml:9:14: spec.instances: expected a value ≥ 1, got 0",
    ),
    "port out of range": (
        _node("  image:\n    name: busybox\n    port: 70000\n"),
        "s.yaml:8:11: spec.image.port: expected a value ≤ 65535, got 70000",
    ),
    "minHealthy above instances": (
        _node(IMAGE + "  instances: 2\n  minHealthy: 3\n"),
        "s.yaml:10:15: spec.minHealthy: expected minHealthy ≤ instances (2), got 3",
    ),
    "endpoint timeout 0": (
        _node(IMAGE + "  endpoint:\n    timeout: 0s\n"),
        "s.yaml:10:14: spec.endpoint.timeout: expected a duration from 10ms to 24h, got '0s'",
    ),
    "endpoint idleTimeout not a duration": (
        _node(IMAGE + "  endpoint:\n    idleTimeout: 15\n"),
        "s.yaml:10:18: spec.endpoint.idleTimeout: "
        "expected a duration such as 500ms, 2s, 1m or 1m30s, got 15",
    ),
    "unknown endpoint field": (
        _node(IMAGE + "  endpoint:\n    port: 80\n"),
        "s.yaml:10:5: spec.endpoint.port: unknown field; expected one of: timeout, idleTimeout",
    ),
    "maintenanceLimit 0": (
        _node(IMAGE + "  maintenanceLimit: 0\n"),
        "s.yaml:9:21: spec.maintenanceLimit: expected a value ≥ 1, got 0",
    ),
    "maintenanceLimit above instances": (
        _node(IMAGE + "  instances: 2\n  maintenanceLimit: 3\n"),
        "s.yaml:10:21: spec.maintenanceLimit: expected maintenanceLimit ≤ instances (2), got 3",
    ),
    "suspended not a boolean": (
        _node(IMAGE + "  suspended: 'yes'\n"),
        "s.yaml:9:14: spec.suspended: expected true or false, got 'yes'",
    ),
    "bad name": (
        _node(IMAGE).replace("name: web", "name: Web_1"),
        f"s.yaml:4:9: metadata.name: {DNS}, got 'Web_1'",
    ),
    "name longer than a DNS label": (
        _node(IMAGE).replace("name: web", f"name: {LONG}"),
        f"s.yaml:4:9: metadata.name: {DNS}, got {repr(LONG)[:57]}...",
    ),
    "bad duration": (
        _node(IMAGE + "  healthCheck:\n    interval: 10\n"),
        "s.yaml:10:15: spec.healthCheck.interval: "
        "expected a duration such as 500ms, 2s, 1m or 1m30s, got 10",
    ),
    "bad size": (
        _node(IMAGE + "  resources:\n    memory: 1GB\n"),
        "s.yaml:10:13: spec.resources.memory: "
        "expected a size in bytes such as 268435456, 256Mi, 1Gi or 300M, got '1GB'",
    ),
    "bad env name": (
        _node(IMAGE + "  env:\n    1BAD: x\n"),
        "s.yaml:10:5: spec.env.1BAD: invalid key '1BAD': "
        "expected an environment variable name: letters, digits and '_'",
    ),
    "build path outside the repo": (
        _node("  image:\n    build: ../elsewhere\n    port: 80\n"),
        "s.yaml:7:12: spec.image.build: expected a path inside the repository, got ../elsewhere",
    ),
    "build path missing": (
        _node("  image:\n    build: nothing\n    port: 80\n"),
        "s.yaml:7:12: spec.image.build: expected an existing folder, nothing is not one",
    ),
    "build path is a file": (
        _node("  image:\n    build: s.yaml\n    port: 80\n"),
        "s.yaml:7:12: spec.image.build: expected an existing folder, s.yaml is not one",
    ),
    "build folder without its Dockerfile": (
        _node("  image:\n    build: .\n    dockerfile: Containerfile\n    port: 80\n"),
        "s.yaml:8:17: spec.image.dockerfile: "
        "expected a file inside the build folder ., Containerfile is not one",
    ),
    "build folder without a Dockerfile": (
        _node("  image:\n    build: .\n    port: 80\n"),
        "s.yaml:7:5: spec.image.dockerfile: "
        "expected a file inside the build folder ., Dockerfile is not one",
    ),
    "both image name and build": (
        _node("  image:\n    name: busybox\n    build: .\n    port: 80\n"),
        "s.yaml:7:5: spec.image: expected exactly one of 'name' (an image) or 'build' (a folder)",
    ),
    "neither image name nor build": (
        _node("  image:\n    port: 80\n"),
        "s.yaml:7:5: spec.image: expected exactly one of 'name' (an image) or 'build' (a folder)",
    ),
    "wrong kind": (
        _node(IMAGE, head="apiVersion: gitops-nodes/v1\nkind: Service\n"),
        "s.yaml:2:7: kind: expected Node or Alias, got 'Service'",
    ),
    "missing kind": (
        "apiVersion: gitops-nodes/v1\nmetadata:\n  name: web\n",
        "s.yaml:1:1: kind: required field is missing; expected Node or Alias",
    ),
    "wrong apiVersion": (
        _node(IMAGE, head="apiVersion: gitops-nodes/v2\nkind: Node\n"),
        "s.yaml:1:13: apiVersion: expected 'gitops-nodes/v1', got 'gitops-nodes/v2'",
    ),
    "non-mapping document": (
        _node(IMAGE) + "---\n- web\n- api\n",
        "s.yaml:10:1: expected a mapping with apiVersion, kind, metadata and spec",
    ),
    "duplicate YAML key": (
        _node(IMAGE).replace("  name: web\n", "  name: web\n  name: api\n"),
        "s.yaml:5:3: invalid YAML: duplicate key 'name'; expected each key once in a mapping",
    ),
    "duplicate nested YAML key": (
        _node("  image:\n    name: busybox\n    port: 80\n    port: 81\n"),
        "s.yaml:9:5: invalid YAML: duplicate key 'port'; expected each key once in a mapping",
    ),
    "YAML syntax error": (
        _node(IMAGE).replace("name: web", "name: web: api"),
        "s.yaml:4:12: invalid YAML: mapping values are not allowed in this context",
    ),
}

BAD_ALIASES = {
    "weight below 0": (
        _alias("    - node: web\n      weight: -5\n"),
        "s.yaml:8:15: spec.nodes[0].weight: expected a value ≥ 0, got -5",
    ),
    "all weights 0": (
        _alias("    - node: web\n      weight: 0\n"),
        "s.yaml:7:5: spec.nodes: expected at least one weight above 0, all are 0",
    ),
    "node listed twice": (
        _alias("    - node: web\n    - node: web\n      weight: 5\n"),
        "s.yaml:7:5: spec.nodes: expected each node once, web listed more than once",
    ),
    "no nodes": (_alias("    []\n"), "s.yaml:7:5: spec.nodes: expected at least 1 item(s)"),
    "unknown node": (
        _alias("    - node: web\n    - node: ghost\n"),
        "s.yaml:8:13: spec.nodes[1].node: "
        "expected the name of a Node in the spec, there is no Node 'ghost'",
    ),
    "unknown route field": (
        _alias("    - node: web\n      share: 5\n"),
        "s.yaml:8:7: spec.nodes[0].share: unknown field; expected one of: node, weight",
    ),
}


@pytest.mark.parametrize(("text", "expected"), BAD_NODES.values(), ids=BAD_NODES.keys())
def test_a_bad_node_is_reported_exactly(write_repo: WriteRepo, text: str, expected: str) -> None:
    assert _problems(write_repo, {"s.yaml": text}) == [expected]


@pytest.mark.parametrize(("text", "expected"), BAD_ALIASES.values(), ids=BAD_ALIASES.keys())
def test_a_bad_alias_is_reported_exactly(write_repo: WriteRepo, text: str, expected: str) -> None:
    assert _problems(write_repo, {"s.yaml": text, "web.yaml": WEB}) == [expected]


def test_a_node_name_defined_in_two_files(write_repo: WriteRepo) -> None:
    problems = _problems(write_repo, {"a.yaml": WEB, "sub/b.yaml": WEB})
    assert problems == [
        "sub/b.yaml:4:9: metadata.name: expected a name unique among Nodes, "
        "'web' is also defined in a.yaml"
    ]


def test_a_foreign_file_with_broken_yaml_outside_hidden_folders_is_reported(
    write_repo: WriteRepo,
) -> None:
    # A YAML error cannot be told apart from a broken spec file, so it is never ignored.
    problems = _problems(write_repo, {"web.yaml": WEB, "ci.yml": "on: [push\n"})
    assert len(problems) == 1
    assert problems[0].startswith("ci.yml:2:1: invalid YAML: ")


def test_every_error_of_a_run_is_reported_together_sorted_by_file_and_line(
    write_repo: WriteRepo,
) -> None:
    # a.yaml: the alias error (line 8) is only found after every file is read, the
    # instances error (line 18) while reading; the report still lists them in file order.
    a_yaml = (
        _alias("    - node: web\n    - node: ghost\n")
        + "---\n"
        + _node(IMAGE + "  instances: 0\n").replace("name: web", "name: other")
    )
    files = {
        "z.yaml": _node(IMAGE).replace("name: web", "name: z") + "  replicas: 1\n",
        "a.yaml": a_yaml,
        "nested/b.yaml": "apiVersion: gitops-nodes/v1\nkind: Node\nmetadata: {name: [\n",
        "web.yaml": WEB,
    }
    root = write_repo(files)

    with pytest.raises(SpecErrors) as caught:
        load_spec(root)

    assert [str(p) for p in caught.value.problems] == [
        "a.yaml:8:13: spec.nodes[1].node: "
        "expected the name of a Node in the spec, there is no Node 'ghost'",
        "a.yaml:18:14: spec.instances: expected a value ≥ 1, got 0",
        "nested/b.yaml:4:1: invalid YAML: did not find expected node content",
        f"z.yaml:9:3: spec.replicas: unknown field; expected one of: {NODE_FIELDS}",
    ]
    message = str(caught.value)
    assert message.splitlines()[0] == "the spec has 4 errors:"
    assert message.splitlines()[1] == "  " + str(caught.value.problems[0])


def test_one_error_is_counted_in_the_singular(write_repo: WriteRepo) -> None:
    with pytest.raises(SpecErrors) as caught:
        load_spec(write_repo({"s.yaml": _node(IMAGE + "  instances: 0\n")}))
    assert str(caught.value).splitlines()[0] == "the spec has 1 error:"


# --- SpecLoader: re-read only what changed --------------------------------------------------


@pytest.fixture
def parse_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The relative paths of every file _parse_file is called on, in call order."""
    calls: list[str] = []
    original = load_module._parse_file

    def counting(root: Path, relative: str, data: bytes) -> object:
        calls.append(relative)
        return original(root, relative, data)

    monkeypatch.setattr(load_module, "_parse_file", counting)
    return calls


def test_loader_reparses_only_the_changed_file(
    write_repo: WriteRepo, parse_calls: list[str]
) -> None:
    root = write_repo({"a.yaml": WEB, "b.yaml": WEB.replace("name: web", "name: api")})
    loader = SpecLoader()
    assert loader.load(root).nodes["web"].instances == 1
    assert sorted(parse_calls) == ["a.yaml", "b.yaml"]

    parse_calls.clear()
    unchanged = loader.load(root)
    assert parse_calls == []
    assert list(unchanged.nodes) == ["api", "web"]

    (root / "a.yaml").write_text(WEB.lstrip() + "  instances: 4\n")
    changed = loader.load(root)
    assert parse_calls == ["a.yaml"]
    assert changed.nodes["web"].instances == 4
    assert changed.nodes["api"] == unchanged.nodes["api"]


def test_loader_forgets_deleted_files_and_sees_new_ones(write_repo: WriteRepo) -> None:
    root = write_repo({"a.yaml": WEB})
    loader = SpecLoader()
    assert list(loader.load(root).nodes) == ["web"]

    (root / "a.yaml").unlink()
    (root / "b.yaml").write_text(WEB.replace("name: web", "name: api"))

    assert list(loader.load(root).nodes) == ["api"]


def test_loader_reports_a_bad_file_every_time_until_it_is_fixed(
    write_repo: WriteRepo, parse_calls: list[str]
) -> None:
    root = write_repo({"a.yaml": _node(IMAGE + "  instances: 0\n")})
    loader = SpecLoader()
    for _ in range(2):
        with pytest.raises(SpecErrors, match=r"spec\.instances"):
            loader.load(root)
    assert parse_calls == ["a.yaml", "a.yaml"]

    (root / "a.yaml").write_text(_node(IMAGE + "  instances: 2\n"))
    assert loader.load(root).nodes["web"].instances == 2


def test_loader_sees_a_changed_build_folder_although_the_yaml_did_not_change(
    write_repo: WriteRepo,
) -> None:
    root = write_repo(
        {"x.yaml": WEB.replace("name: busybox", "build: app"), "app/Dockerfile": "FROM a\n"}
    )
    loader = SpecLoader()
    before = loader.load(root).nodes["web"]

    (root / "app" / "Dockerfile").write_text("FROM b\n")
    after = loader.load(root).nodes["web"]

    assert after.build is not None and before.build is not None
    assert after.build.tag != before.build.tag
    assert after.spec_hash != before.spec_hash


def test_loader_checks_names_across_files_even_when_both_are_cached(
    write_repo: WriteRepo,
) -> None:
    root = write_repo({"a.yaml": WEB, "b.yaml": WEB.replace("name: web", "name: api")})
    loader = SpecLoader()
    loader.load(root)

    (root / "b.yaml").write_text(WEB)  # now a second 'web'; a.yaml is served from the cache

    with pytest.raises(SpecErrors, match=r"'web' is also defined in a\.yaml"):
        loader.load(root)


def test_the_spec_offers_exactly_the_variable_types_the_node_runtime_checks() -> None:
    from typing import get_args

    from gitops_nodes.pynode import types
    from gitops_nodes.spec.models import VariableType

    offered = get_args(VariableType)
    assert offered and all(types.lookup(name) is not None for name in offered)
    assert types.lookup("complex") is None
