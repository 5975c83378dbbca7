"""A three-node Swarm of Docker engines in network namespaces (scripts/swarm-lab), for the
tests of the multi-host paths: one lab per test session, a fresh project per test.

The lab is made by the script at the first test that needs it and removed at the end of
the session, also when tests failed; a lab that was up before the session (someone trying
multi-host by hand) is used and left up. A test that needs the lab fails, loudly, when it
cannot be made. Test sessions take turns on it (a lock held for the whole session): it is
one set of names and addresses on this machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import docker
import pytest

from ..helpers import remove_networks
from .lab import Lab, LabRepo, lab_traces, swarm_lab

SESSION_LOCK = Path("/run/lock/gitops-nodes-swarm-lab.session.lock")
LOCK_WITHIN = 1800.0  # another session's lab tests take minutes, not half an hour
GONE_WITHIN = 90.0  # for a removed project's tasks to stop on every host


def _take_session_lock() -> IO[str]:
    handle = SESSION_LOCK.open("w")
    deadline = time.monotonic() + LOCK_WITHIN
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                pytest.fail(
                    f"another test session has held the swarm lab for {LOCK_WITHIN:g}s "
                    f"({SESSION_LOCK})",
                    pytrace=False,
                )
            time.sleep(1.0)  # another session's lab tests run: wait for its lock


@pytest.fixture(scope="session")
def lab_lock() -> Iterator[None]:
    """This session's turn on the lab's names and addresses."""
    if os.geteuid() != 0:
        pytest.fail("the swarm lab needs root (network namespaces, dockerd)", pytrace=False)
    handle = _take_session_lock()
    try:
        yield
    finally:
        handle.close()


@pytest.fixture(scope="session")
def lab(lab_lock: None, docker_client: Any) -> Iterator[Lab]:
    """The lab, up; removed at the end of the session unless it was up before it."""
    # docker_client: this machine's engine answers and holds the base image the lab copies.
    was_up = swarm_lab("status").returncode == 0
    started = time.monotonic()
    made = swarm_lab("up", timeout=600)
    if made.returncode != 0:
        pytest.fail(
            f"scripts/swarm-lab up failed (exit {made.returncode}):\n{made.stdout}{made.stderr}",
            pytrace=False,
        )
    print(f"\nswarm lab up in {time.monotonic() - started:.1f}s{' (was up)' if was_up else ''}")
    made_lab = Lab.from_script()
    try:
        yield made_lab
    finally:
        made_lab.close()
        if not was_up:
            removed = swarm_lab("down", timeout=300)
            assert removed.returncode == 0, removed.stdout + removed.stderr
            left = lab_traces()
            assert left == [], f"scripts/swarm-lab down left: {left}"


def _remove_project(lab: Lab, name: str) -> None:
    """Everything labelled with the project, on every host of the lab."""
    selector = {"label": [f"io.gitops-nodes.project={name}"]}
    manager = lab.client(lab.manager).api
    for service in manager.services(filters=selector):
        with contextlib.suppress(docker.errors.NotFound):
            manager.remove_service(service["ID"])
    deadline = time.monotonic() + GONE_WITHIN
    for host in lab.hosts:
        api = lab.client(host).api
        while api.containers(filters=selector) and time.monotonic() < deadline:
            time.sleep(0.2)  # Swarm stops the tasks of removed services by itself
        for container in api.containers(all=True, filters=selector):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container["Id"], force=True, v=True)
    for secret in manager.secrets(filters=selector):
        with contextlib.suppress(docker.errors.NotFound):
            manager.remove_secret(secret["ID"])
    remove_networks(manager, selector, deadline)
    built_for = {"label": [f"io.gitops-nodes.built-for={name}"]}
    for host in lab.hosts:
        api = lab.client(host).api
        images = {i["Id"]: i for f in (built_for, selector) for i in api.images(filters=f)}
        for image in images.values():
            for tag in image.get("RepoTags") or ():
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    api.remove_image(tag, force=True)


@pytest.fixture
def lab_project(lab: Lab) -> Iterator[str]:
    """A unique project on the lab; afterwards its services, tasks, secrets, networks and
    images are removed from every host (by label), even when the test failed, and every
    host is on the network again."""
    name = f"gnl-{secrets.token_hex(4)}"
    yield name
    for host in lab.hosts:
        swarm_lab("mend", host.name)  # a test that cut a host may have failed before mending
    lab.wait_ready()
    _remove_project(lab, name)


@pytest.fixture
def lab_repo(lab: Lab, lab_project: str, tmp_path: Path) -> Callable[..., LabRepo]:
    """A repository folder deployed onto the lab with `runtime: swarm`."""

    def make(settings: str) -> LabRepo:
        root = tmp_path / "repo"
        root.mkdir(exist_ok=True)
        return LabRepo(lab, root, lab_project, tmp_path / "state", settings)

    return make
