"""The repository's settings file (gitops-nodes.yaml): defaults, the runtime switch, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gitops_nodes.cli import main
from gitops_nodes.runtime.select import runtime_name
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import load_spec
from gitops_nodes.spec.settings import SETTINGS_FILE, Settings, load_settings

WriteRepo = Callable[[dict[str, str]], Path]

NODE = """
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: api}
spec:
  image: {name: busybox, port: 8080}
"""


def problems(root: Path) -> list[str]:
    with pytest.raises(SpecErrors) as caught:
        load_settings(root)
    return [str(p) for p in caught.value.problems]


def test_no_file_means_one_docker_host(write_repo: WriteRepo) -> None:
    settings = load_settings(write_repo({"spec.yaml": NODE}))
    assert settings == Settings()
    assert settings.runtime == "docker"
    assert (settings.swarm.port, settings.swarm.admin_port) == (8080, 8081)


def test_the_switch_to_a_swarm_is_one_line(write_repo: WriteRepo) -> None:
    root = write_repo({"spec.yaml": NODE, SETTINGS_FILE: "runtime: swarm\n"})
    assert load_settings(root).runtime == "swarm"
    assert runtime_name(None, load_settings(root)) == "swarm"
    assert runtime_name("docker", load_settings(root)) == "docker"  # the flag wins


def test_every_swarm_setting(write_repo: WriteRepo) -> None:
    root = write_repo(
        {
            SETTINGS_FILE: """
            runtime: swarm
            swarm:
              port: 9080
              adminPort: 9081
              registry: registry.example.com:5000/ml
              engines: {worker-1: "ssh://root@10.0.0.12"}
            """
        }
    )
    swarm = load_settings(root).swarm
    assert (swarm.port, swarm.admin_port) == (9080, 9081)
    assert swarm.registry == "registry.example.com:5000/ml"
    assert swarm.engines == {"worker-1": "ssh://root@10.0.0.12"}


def test_bad_settings_name_file_line_column_and_field(write_repo: WriteRepo) -> None:
    root = write_repo(
        {
            SETTINGS_FILE: """
            runtime: kubernetes
            swarm:
              prot: 9080
              adminPort: 8080
              registry: "https://registry.example.com"
            """
        }
    )
    assert problems(root) == [
        "gitops-nodes.yaml:1:10: runtime: expected 'docker' or 'swarm', got 'kubernetes'",
        "gitops-nodes.yaml:3:3: swarm.prot: unknown field; expected one of: port, adminPort, "
        "registry, engines",
        "gitops-nodes.yaml:5:13: swarm.registry: expected host[:port]/path as docker push "
        "takes it (registry.example.com:5000/ml: lowercase, no scheme, a port from 1 to 65535, "
        "at most 255 characters), got 'https://registry.example.com'",
    ]


@pytest.mark.parametrize(
    "registry",
    ["reg:99999999/x", "reg:0/x", "-/x", "./x", "reg./x", "Reg/x", "reg/x-", "r" * 256],
    ids=["port past 65535", "port 0", "a dash", "a dot", "an empty label", "uppercase",
         "a path ending in a dash", "256 characters"],
)  # fmt: skip
def test_a_registry_docker_could_not_push_to_is_refused(
    write_repo: WriteRepo, registry: str
) -> None:
    # Before: accepted by a looser pattern, and refused by the engine at the first push.
    root = write_repo({SETTINGS_FILE: f"swarm: {{registry: '{registry}'}}\n"})
    [problem] = problems(root)
    assert problem.startswith("gitops-nodes.yaml:1:19: swarm.registry: expected host[:port]/path")


@pytest.mark.parametrize(
    "registry", ["registry.example.com:5000/ml", "localhost:5000", "10.0.0.2:5000/a/b-c__d.e"]
)
def test_registries_docker_pushes_to_are_taken(write_repo: WriteRepo, registry: str) -> None:
    root = write_repo({SETTINGS_FILE: f"swarm: {{registry: '{registry}'}}\n"})
    assert load_settings(root).swarm.registry == registry


def test_an_engine_without_a_node_hostname_and_a_notification_name_twice_are_refused(
    write_repo: WriteRepo,
) -> None:
    root = write_repo({SETTINGS_FILE: "swarm: {engines: {'': 'ssh://x'}}\n"})
    assert problems(root) == [
        "gitops-nodes.yaml:1:19: swarm.engines.: invalid key '': expected a Swarm node's "
        "hostname, as `docker node ls` shows it (letters, digits, '.', '-', '_')"
    ]
    twice = "notifications:\n" + "  - {name: ops, type: webhook, url: 'https://h/x'}\n" * 2
    root = write_repo({SETTINGS_FILE: twice})
    assert problems(root) == [
        "gitops-nodes.yaml:2:3: notifications: expected each notification target's name once, "
        "got ops more than once"
    ]


def test_the_data_and_admin_ports_differ(write_repo: WriteRepo) -> None:
    root = write_repo({SETTINGS_FILE: "swarm: {port: 8080, adminPort: 8080}\n"})
    assert problems(root) == [
        "gitops-nodes.yaml:1:32: swarm.adminPort: expected a port other than the data port 8080"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- swarm\n", "gitops-nodes.yaml:1:1: expected a mapping such as `runtime: swarm`"),
        ("runtime: [swarm\n", "gitops-nodes.yaml:2:1: invalid YAML"),
        ("runtime: swarm\nruntime: docker\n", "gitops-nodes.yaml:2:1: invalid YAML: duplicate"),
    ],
)
def test_a_settings_file_that_is_not_a_mapping(
    write_repo: WriteRepo, text: str, expected: str
) -> None:
    (problem,) = problems(write_repo({SETTINGS_FILE: text}))
    assert problem.startswith(expected)


def test_the_spec_never_reads_the_settings_file_as_documents(write_repo: WriteRepo) -> None:
    # even when it holds something that looks like a Node, it is settings, not spec
    root = write_repo({"spec.yaml": NODE, SETTINGS_FILE: NODE})
    assert list(load_spec(root).nodes) == ["api"]
    assert problems(root)[0].startswith("gitops-nodes.yaml:")


def test_validate_reports_settings_errors_and_exits_1(
    write_repo: WriteRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_repo({"spec.yaml": NODE, SETTINGS_FILE: "runtime: nomad\n"})
    assert main(["validate", str(root)]) == 1
    assert "gitops-nodes.yaml:1:10: runtime: expected 'docker' or 'swarm'" in (
        capsys.readouterr().err
    )


def test_serve_refuses_a_swarm_repo(
    write_repo: WriteRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_repo({"spec.yaml": NODE, SETTINGS_FILE: "runtime: swarm\n"})
    assert main(["serve", str(root)]) == 1
    assert "on a Swarm the balancer runs as a service" in capsys.readouterr().err
