"""Running for months on the real engine: an instance's log rotates at its budget and `logs`
still shows its newest lines; watch keeps quiet polls out of its log; destroy leaves no state."""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir
from tests.conftest import BASE_IMAGE

from .helpers import Watch, alias_yaml, apply, node_yaml

MAX_SIZE, MAX_FILES = 64_000, 2
PADDING = "x" * 900  # each request's log line is about 1 kB, so 300 of them fill 4 files


def cli(project: str, state_base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gitops_nodes", *args, "--project", project]
    argv += ["--state-dir", str(state_base)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_a_nodes_log_rotates_at_its_budget_and_logs_shows_the_newest_lines(
    app_repo: Callable[[str], Path],
    runtime: DockerRuntime,
    project: str,
    state: StateDir,
    docker_client: Any,
) -> None:
    logs = f"  logs: {{maxSize: {MAX_SIZE}, maxFiles: {MAX_FILES}}}\n"
    root = app_repo(node_yaml("web", "1", extra_env=', LOG: "1"', extra_spec=logs))
    run = apply(root, runtime, project, state)
    assert run.report is not None and run.report.ok
    [instance] = runtime.list_instances(project)
    config = docker_client.api.inspect_container(instance.name)["HostConfig"]["LogConfig"]
    assert config == {
        "Type": "json-file",
        "Config": {"max-size": str(MAX_SIZE), "max-file": str(MAX_FILES)},
    }

    connection = http.client.HTTPConnection("127.0.0.1", instance.port or 0, timeout=10)
    for n in range(300):  # one line each: "1 GET /<n>-xxx…"
        connection.request("GET", f"/{n}-{PADDING}")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
    connection.close()

    done = cli(project, state.path.parent, "logs", "web")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if " GET /" in line]
    shown = {int(line.split(" GET /", 1)[1].split("-", 1)[0]) for line in lines}
    assert 299 in shown  # the newest line, after the log rotated several times
    assert 0 not in shown and "1 serving on 8080" not in done.stdout  # rotated away
    # No more than the budget holds: each line is over 900 bytes in the engine's log.
    assert len(lines) <= MAX_SIZE * MAX_FILES // 900
    # The newest lines without gaps, across the rotated file and the current one.
    assert sorted(shown) == list(range(min(shown), 300))
    assert len(shown) > MAX_SIZE // 1100  # more than the current file could hold alone

    tail = cli(project, state.path.parent, "logs", "web", "--tail", "3")
    assert tail.returncode == 0, tail.stderr
    assert [line.split(" GET /")[1][:4] for line in tail.stdout.splitlines()] == [
        "297-",
        "298-",
        "299-",
    ]


def test_watch_keeps_quiet_polls_out_of_its_log_and_destroy_leaves_no_state(
    watch: Callable[[str], Watch], project: str, tmp_path: Path
) -> None:
    spec = node_yaml("v1", "1") + alias_yaml("api", {"v1": 100})
    watcher = watch(spec)
    revision = git_head(watcher)
    watcher.wait(lambda: watcher.applied(revision), "the first commit applied")
    first = watcher.status()["reconciles"]
    watcher.wait(lambda: watcher.status()["reconciles"] >= first + 4, "4 more polls (1s each)")
    assert watcher.versions(5) == {"1"}
    assert watcher.stop() == 0

    records = [json.loads(line) for line in watcher.log.read_text().splitlines() if line[:1] == "{"]
    assert any("applied" in r["message"] for r in records)
    assert not [r for r in records if "unchanged" in r["message"]], "quiet polls logged at info"

    state_base = tmp_path / "state"
    project_state = state_base / project
    assert (project_state / "source").is_dir() and (project_state / "watch.json").is_file()
    done = cli(project, state_base, "destroy", str(watcher.repo))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "removed from" in done.stdout
    assert not project_state.exists(), sorted(p.name for p in project_state.iterdir())


def git_head(watcher: Watch) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=watcher.repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_destroy_removes_a_built_image_that_a_rebuild_left_untagged(
    runtime: DockerRuntime, project: str, docker_client: Any
) -> None:
    """A rebuild under the same tag leaves the earlier image dangling (`<none>:<none>` in the
    engine's listing): destroy removes it by id instead of failing on that name."""
    tag = f"gitops-nodes-test/{project}:same"
    for generation in ("1", "2"):
        dockerfile = (
            f"FROM {BASE_IMAGE}\n"
            f"LABEL io.gitops-nodes.built-for={project} generation={generation}\n"
        )
        for _ in docker_client.api.build(
            fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, decode=True
        ):
            pass
    selector = {"label": [f"io.gitops-nodes.built-for={project}"]}
    assert len(docker_client.api.images(filters=selector)) == 2  # one of them dangling
    cleanup = runtime.remove_images(project)
    assert docker_client.api.images(filters=selector) == []
    assert cleanup.left == ()
    assert tag in cleanup.removed
    assert "<none>:<none>" not in cleanup.removed
