"""R-own and R-git on the real engine: containers with our labels that are not ours (a copy
started by hand, another state directory's, one run from our image) are never removed,
preferred or adopted silently; and a git lock left in watch's clone does not stop it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.diff import Action
from gitops_nodes.runtime import labels
from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir, read_ownership

from .helpers import Watch, alias_yaml, apply, get_json, node_yaml, wait_for_version

Repo = Callable[[str], Path]
OTHER_OWNER = "owned by another state directory; --adopt to take it over"


def gitops(project: str, state: StateDir, *args: str) -> subprocess.CompletedProcess[str]:
    """`gitops-nodes ARGS --project P --state-dir S` in a fresh interpreter."""
    argv = [sys.executable, "-m", "gitops_nodes", *args, "--project", project]
    argv += ["--state-dir", str(state.path.parent)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def answers(port: int, times: int = 10) -> set[str]:
    """The versions the alias answers with, over a few requests (each must succeed)."""
    return {get_json(port, "/aliases/api/")["version"] for _ in range(times)}


@pytest.mark.parametrize("copy_owner", [True, False], ids=["owner-copied", "owner-not-copied"])
def test_an_impostor_with_copied_labels_never_replaces_the_real_instance(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve: Callable[[], int],
    docker_client: Any,
    copy_owner: bool,
) -> None:
    root = app_repo(node_yaml("api", "1") + alias_yaml("api", {"api": 1}))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    port = serve()
    wait_for_version(port, "/aliases/api/", "1")
    [real] = runtime.list_instances(project)

    # Started by hand with the real instance's labels (project, node, index, spec hash,
    # config), no published port, and a name that sorts before the real one's.
    found = docker_client.api.inspect_container(real.name)["Config"]
    copied = dict(found["Labels"])
    if not copy_owner:
        copied.pop(labels.OWNER)
    impostor = f"{project}-api-0--copy"
    created = docker_client.api.create_container(
        image=found["Image"], name=impostor, labels=copied, environment=found["Env"]
    )
    docker_client.api.start(created["Id"])

    run = apply(root, runtime, project, state)

    names = {i.name for i in runtime.list_instances(project)}
    assert real.name in names  # the real, served instance stays
    assert answers(port) == {"1"}  # and the alias keeps answering from it
    if copy_owner:  # ours by its labels: a second instance 0 beside the served one, removed
        assert run.report is not None and run.report.ok, run.report
        [change] = run.plan.diff.nodes
        [removal] = change.instances
        assert (removal.action, removal.old) == (Action.DELETE, impostor)
        assert f"beside {real.name}, which the routing table serves" in removal.reason
        assert impostor not in names
    else:  # not ours: reported, left alone
        assert run.report is None  # nothing to do
        assert [i.name for i in run.plan.left_alone] == [impostor]
        assert impostor in names
        plan = gitops(project, state, "plan", str(root))
        assert plan.returncode == 0, plan.stderr
        assert "No changes." in plan.stdout
        assert f"container {impostor} (node api, instance 0): {OTHER_OWNER}" in plan.stdout


def test_a_second_state_directory_never_destroys_the_first_ones_nodes(
    app_repo: Repo,
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    serve: Callable[[], int],
    tmp_path: Path,
) -> None:
    root = app_repo(node_yaml("api", "1") + node_yaml("old", "1") + alias_yaml("api", {"api": 1}))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    port = serve()
    wait_for_version(port, "/aliases/api/", "1")
    first = {i.name for i in runtime.list_instances(project)}

    # A second checkout of the same-named project, without node "old", another state dir.
    app_repo(node_yaml("api", "2") + alias_yaml("api", {"api": 1}))
    other = StateDir.for_project(project, tmp_path / "other-state")
    plan = gitops(project, other, "plan", str(root))
    assert plan.returncode == 0, plan.stderr
    assert "will be destroyed" not in plan.stdout and "0 to destroy" in plan.stdout
    for name in first:
        assert f"container {name} " in plan.stdout and OTHER_OWNER in plan.stdout

    run = apply(root, runtime, project, other)
    assert run.report is not None and run.report.ok, run.report
    assert first <= {i.name for i in runtime.list_instances(project)}  # none removed
    assert answers(port) == {"1"}  # the first one's serve still routes to its nodes
    assert read_ownership(other).owner != read_ownership(state).owner
    shown = gitops(project, other, "status")
    assert shown.returncode == 0, shown.stderr
    for name in first:
        assert f"container {name}: {OTHER_OWNER}" in shown.stdout

    # Taking them over is explicit, and then plan shows what it would do to them.
    adopting = gitops(project, other, "plan", str(root), "--adopt")
    assert adopting.returncode == 0, adopting.stderr
    assert "Node old will be destroyed" in adopting.stdout
    assert OTHER_OWNER not in adopting.stdout


def test_a_container_run_by_hand_from_our_image_is_not_ours_and_destroy_says_so(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir, docker_client: Any
) -> None:
    root = app_repo(node_yaml("api", "1"))
    assert apply(root, runtime, project, state).report.ok  # type: ignore[union-attr]
    [instance] = runtime.list_instances(project)
    assert instance.config is not None
    image = instance.config.image
    hand = f"hand-{project}"
    docker_client.api.create_container(image=image, name=hand)
    try:
        docker_client.api.start(hand)
        inherited = docker_client.api.inspect_container(hand)["Config"]["Labels"] or {}
        assert labels.PROJECT not in inherited  # not the project's: nothing lists it as ours

        destroyed = gitops(project, state, "destroy", str(root))
        assert destroyed.returncode == 0, destroyed.stderr
        assert runtime.list_instances(project) == []
        assert f"image {image}: in use by container {hand}" in destroyed.stdout
        assert docker_client.api.inspect_container(hand)["State"]["Running"]  # left alone
    finally:
        docker_client.api.remove_container(hand, force=True)


def test_a_stale_ref_lock_in_watchs_clone_does_not_stop_the_next_commit(
    watch: Callable[[str], Watch], tmp_path: Path
) -> None:
    spec = node_yaml("api", "1") + alias_yaml("api", {"api": 1})
    running = watch(spec)
    first = running.commit(spec + "# applied\n", "first, applied")
    running.wait(lambda: running.applied(first), "the first commit to be applied")

    # What a fetch killed mid-way leaves in watch's clone.
    clone = tmp_path / "state" / running.project / "source" / "repo.git"
    lock = clone / "refs" / "remotes" / "source" / "main.lock"
    lock.write_text("")
    second = running.commit(node_yaml("api", "2") + alias_yaml("api", {"api": 1}), "second")
    assert running.hook() == 202
    running.wait(lambda: running.applied(second), "the commit after the stale lock")
    assert not lock.exists()
    assert "main.lock" in running.output()
    running.wait(lambda: running.serves({"2"}), "version 2 to serve")
