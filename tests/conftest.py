"""Shared fixtures. Docker-backed fixtures fail loudly (never skip) when no engine answers,
and remove everything their project created, by label, even when the test fails."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BASE_IMAGE = "gitops-nodes/python-base:bookworm"
APP_DIR = Path(__file__).parent / "integration" / "app"


@pytest.fixture(autouse=True, scope="session")
def no_terminal_for_commands() -> Iterator[None]:
    """The commands tests run read /dev/null, never the terminal pytest -s leaves them:
    `apply` on a terminal stops to ask for yes. The confirmation's own tests give theirs a
    pseudo-terminal explicitly."""
    if not os.isatty(0):
        yield
        return
    saved = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


@pytest.fixture(autouse=True)
def logging_as_it_was() -> Iterator[None]:
    """Commands run in-process set the root logger's handler to the sys.stderr of the
    moment, which is the test's capture; put the handlers back so that a thread still
    logging after its test (a notifier's retry) does not write to a closed capture."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def write_repo(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """Write {relative path: YAML text} into a fresh repo folder and return the folder."""
    root = tmp_path / "repo"

    def write(files: dict[str, str]) -> Path:
        for relative, text in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"))
        root.mkdir(exist_ok=True)
        return root

    return write


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """A Docker SDK client for a real engine; the test fails when none answers."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(
            f"integration tests need a Docker engine and none answers ({exc}); "
            "run scripts/test, which starts one",
            pytrace=False,
        )
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"missing {BASE_IMAGE}; run scripts/test, which makes it", pytrace=False)
    return client


@pytest.fixture
def project(docker_client: Any) -> Iterator[str]:
    """A unique project name; afterwards every container and image labelled with it is removed."""
    name = f"gnt-{secrets.token_hex(4)}"
    yield name
    remove_project(docker_client, name)


def remove_project(docker_client: Any, name: str) -> None:
    """Remove every container and image labelled with project name, and its sockets."""
    selector = {"label": [f"io.gitops-nodes.project={name}"]}
    for container in docker_client.api.containers(all=True, filters=selector):
        docker_client.api.remove_container(container["Id"], force=True, v=True)
    # Images are labelled with the project they were built for, not the project label
    # (which containers run from them would inherit); older ones with the project label.
    import docker

    built_for = {"label": [f"io.gitops-nodes.built-for={name}"]}
    images = {
        image["Id"]: image
        for filters in (built_for, selector)
        for image in docker_client.api.images(filters=filters)
    }
    from gitops_nodes.runtime.container_records import image_names
    from gitops_nodes.runtime.docker import project_sockets  # the Docker SDK

    for image in images.values():
        for tag in image_names(image):
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.api.remove_image(tag, force=True)

    shutil.rmtree(project_sockets(name), ignore_errors=True)
    from gitops_nodes.runtime.secretfiles import remove_project_files

    remove_project_files(name)  # instances' secret files, on a tmpfs


@pytest.fixture
def app_repo(tmp_path: Path) -> Callable[[str], Path]:
    """A repo holding a copy of the test service's build folder at app/, plus the given YAML."""
    root = tmp_path / "repo"

    def make(spec: str) -> Path:
        if not (root / "app").exists():
            shutil.copytree(APP_DIR, root / "app")
        (root / "spec.yaml").write_text(textwrap.dedent(spec).lstrip("\n"))
        return root

    return make


@pytest.fixture
def started() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """subprocess.Popen, each process killed at the end if it still runs: a test that fails
    while waiting for one (under load, say) leaves none behind."""
    processes: list[subprocess.Popen[str]] = []

    def start(*args: Any, **kwargs: Any) -> subprocess.Popen[str]:
        process: subprocess.Popen[str] = subprocess.Popen(*args, **kwargs)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
