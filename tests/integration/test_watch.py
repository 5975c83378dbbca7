"""The GitOps loop end to end: real git repositories, the real engine, real HTTP under load."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.runtime.docker import DockerRuntime
from tests.conftest import APP_DIR

from .helpers import alias_yaml, node_yaml
from .test_serve import Load, free_port

TOKEN = "test-hook-token"


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


class Watch:
    """A `gitops-nodes watch` process following a repository made for the test."""

    def __init__(self, repo: Path, project: str, state: Path) -> None:
        self.repo = repo
        self.project = project
        self.port, self.admin = free_port(), free_port()
        env = {**os.environ, "GITOPS_NODES_HOOK_TOKEN": TOKEN}
        state.mkdir(parents=True, exist_ok=True)
        self.log = state / f"watch-{self.port}.log"
        self.log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitops_nodes",
                "watch",
                f"file://{repo}",
                "--project",
                project,
                "--state-dir",
                str(state),
                "--interval",
                "1s",
                "--port",
                str(self.port),
                "--admin-port",
                str(self.admin),
            ],
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )

    def commit(self, spec: str, message: str) -> str:
        (self.repo / "spec.yaml").write_text(spec)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", message)
        return git(self.repo, "rev-parse", "HEAD")

    def hook(self, token: str = TOKEN) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        connection.request("POST", "/-/hooks/git", headers={"authorization": f"Bearer {token}"})
        response = connection.getresponse()
        response.read()
        return response.status

    def status(self) -> dict[str, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        connection.request("GET", "/-/status")
        data: dict[str, Any] = json.loads(connection.getresponse().read())
        return data["watch"]

    def wait(self, condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.output()}"
            time.sleep(0.05)

    def applied(self, revision: str) -> bool:
        try:
            return bool(self.status()["appliedRevision"] == revision)
        except (OSError, ValueError, KeyError):
            return False

    def versions(self, count: int = 40) -> set[str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        seen = set()
        for _ in range(count):
            connection.request("GET", "/aliases/api/predict")
            response = connection.getresponse()
            body = json.loads(response.read())
            assert response.status == 200, body
            seen.add(body["version"])
        return seen

    def serves(self, versions: set[str]) -> bool:
        try:
            return self.versions(5) == versions
        except (AssertionError, OSError, http.client.HTTPException, ValueError):
            return False  # not listening yet, or not serving these versions yet

    def output(self) -> str:
        """The watch process's last log lines, for failure messages."""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-40:])

    def stop(self) -> int:
        self.process.terminate()
        code = self.process.wait(timeout=60)
        self.log_file.close()
        return code


@pytest.fixture
def watch(tmp_path: Path, project: str) -> Iterator[Callable[[str], Watch]]:
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shutil.copytree(APP_DIR, repo / "app")
    started: list[Watch] = []

    def start(first_spec: str) -> Watch:
        watcher = Watch(repo, project, tmp_path / "state")
        watcher.commit(first_spec, "first")
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        if watcher.process.poll() is None:
            watcher.stop()


def serving_v1(watch: Callable[[str], Watch]) -> tuple[Watch, str]:
    """A watch on a first commit that serves node v1 behind alias api, once it is applied."""
    watcher = watch(node_yaml("v1", "1") + alias_yaml("api", {"v1": 100}))
    first = git(watcher.repo, "rev-parse", "HEAD")
    watcher.wait(lambda: watcher.applied(first), "the first commit")
    return watcher, first


def test_commits_become_traffic_with_zero_failed_requests(
    watch: Callable[[str], Watch], runtime: DockerRuntime, project: str
) -> None:
    v1 = node_yaml("v1", "1")
    v2 = node_yaml("v2", "2")
    watcher, _ = serving_v1(watch)
    assert watcher.versions() == {"1"}

    with Load(watcher.port, "/aliases/api/predict") as load:
        both = watcher.commit(v1 + v2 + alias_yaml("api", {"v1": 50, "v2": 50}), "v2 at 50%")
        assert watcher.hook() == 202
        watcher.wait(lambda: watcher.applied(both), "the 50/50 commit")
        assert watcher.versions() == {"1", "2"}

        only_v2 = watcher.commit(v2 + alias_yaml("api", {"v2": 100}), "v2 only")
        watcher.wait(lambda: watcher.applied(only_v2), "the v2 commit (found by polling)")
        assert watcher.versions() == {"2"}
        watcher.wait(
            lambda: {i.node for i in runtime.list_instances(project)} == {"v2"}, "v1 removed"
        )

        bad = watcher.commit(v2 + alias_yaml("api", {"v3": 100}), "points at a node nobody has")
        assert watcher.hook() == 202
        watcher.wait(
            lambda: (watcher.status()["lastError"] or {}).get("revision") == bad, "the error"
        )
        error = watcher.status()["lastError"]
        assert error["outcome"] == "invalid"
        assert "there is no Node 'v3'" in error["error"]
        assert watcher.status()["appliedRevision"] == only_v2
        assert watcher.versions() == {"2"}

    assert load.failures == [], (load.failures[:5], watcher.output())
    assert {"1", "2"} <= set(load.versions), load.versions

    # Drift while the newest commit is bad: healed from the last good revision. (Requests in
    # flight on a container removed by force fail; that is why no load runs here.)
    victim = runtime.list_instances(project)[0]
    runtime.remove_instance(project, victim.name)
    watcher.wait(
        lambda: any(
            i.name != victim.name and i.state == "running" for i in runtime.list_instances(project)
        ),
        "the removed instance to be healed",
        seconds=30,
    )
    watcher.wait(lambda: watcher.serves({"2"}), "v2 serving again", seconds=30)

    with Load(watcher.port, "/aliases/api/predict") as load:
        fixed = watcher.commit(v2 + node_yaml("v3", "3") + alias_yaml("api", {"v3": 100}), "fix")
        assert watcher.hook() == 202
        watcher.wait(lambda: watcher.applied(fixed), "the fixed commit")
        assert watcher.versions() == {"3"}
    assert load.failures == [], (load.failures[:5], watcher.output())
    assert {"2", "3"} <= set(load.versions), load.versions
    assert watcher.stop() == 0


def test_hook_needs_the_token(watch: Callable[[str], Watch]) -> None:
    watcher, _ = serving_v1(watch)
    assert watcher.hook("wrong") == 401
    assert watcher.hook("") == 401
    assert watcher.hook() == 202


def rollout_alias(routes: dict[str, int], steps: str, extra: str = "") -> str:
    return alias_yaml("api", routes).replace(
        "spec:\n",
        f"spec:\n  rollout: {{steps: {steps}, pause: 1s, maxErrorRate: 0.1{extra}}}\n",
    )


def test_rollout_moves_an_alias_in_steps(
    watch: Callable[[str], Watch], runtime: DockerRuntime, project: str
) -> None:
    watcher, first = serving_v1(watch)

    with Load(watcher.port, "/aliases/api/predict") as load:
        target = watcher.commit(node_yaml("v2", "2") + rollout_alias({"v2": 100}, "[50]"), "v2")
        assert watcher.hook() == 202
        watcher.wait(lambda: (watcher.status()["rollout"] or {}).get("step") == 1, "step 1")
        assert watcher.status()["rollout"]["aliases"] == {"api": [["v2", 500], ["v1", 500]]}
        assert watcher.status()["appliedRevision"] == first
        watcher.wait(lambda: watcher.applied(target), "the rollout to finish", seconds=30)
        assert watcher.status()["rollout"] is None
        assert watcher.versions() == {"2"}
    assert load.failures == [], (load.failures[:5], watcher.output())
    assert load.versions["1"] > 0 and load.versions["2"] > 0
    watcher.wait(lambda: {i.node for i in runtime.list_instances(project)} == {"v2"}, "v1 gone")


def test_rollout_rolls_back_when_the_new_node_fails_requests(
    watch: Callable[[str], Watch], runtime: DockerRuntime, project: str
) -> None:
    watcher, first = serving_v1(watch)

    with Load(watcher.port, "/aliases/api/predict") as load:
        broken = node_yaml("v2", "2", extra_env=', STATUS: "500"')
        bad = watcher.commit(
            broken + rollout_alias({"v2": 100}, "[50]", ", minRequests: 5"), "v2 answers 500"
        )
        assert watcher.hook() == 202
        watcher.wait(
            lambda: (watcher.status()["lastError"] or {}).get("revision") == bad,
            "the rollback",
            seconds=30,
        )
    error = watcher.status()["lastError"]
    assert error["outcome"] == "rolled back"
    assert "over the 10.0% bound" in error["error"], error
    assert watcher.status()["appliedRevision"] == first
    assert watcher.versions() == {"1"}
    assert load.failures and all(f.startswith("500") for f in load.failures)
    watcher.wait(lambda: {i.node for i in runtime.list_instances(project)} == {"v1"}, "v2 gone")


def test_a_restart_with_a_bad_commit_heals_from_the_last_good_one(
    watch: Callable[[str], Watch], runtime: DockerRuntime, project: str
) -> None:
    good_spec = node_yaml("v1", "1") + alias_yaml("api", {"v1": 100})
    watcher = watch(good_spec)
    good = git(watcher.repo, "rev-parse", "HEAD")
    watcher.wait(lambda: watcher.applied(good), "the first commit")
    assert watcher.stop() == 0

    bad = watcher.commit(good_spec.replace("instances: 1", "instances: 0"), "bad")
    for instance in runtime.list_instances(project):
        runtime.remove_instance(project, instance.name)  # gone while nobody watched

    again = Watch(watcher.repo, project, watcher.log.parent)
    try:
        again.wait(lambda: again.serves({"1"}), "v1 healed from the last good commit")
        status = again.status()
        assert status["appliedRevision"] == good
        assert status["lastError"]["revision"] == bad
    finally:
        again.stop()
