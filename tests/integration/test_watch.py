"""The GitOps loop end to end: real git repositories, the real engine, real HTTP under load."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path

import pytest

from gitops_nodes.runtime.docker import DockerRuntime
from tests.receiver import Receiver

from .helpers import Load, Watch, alias_yaml, git, node_yaml


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
        # Polled, not sampled once: the alias splits by smooth weighted round robin (v1, v2,
        # v1, ...) across all clients, and with the load's four threads in lockstep with
        # this one, all 40 of its requests could land on v2's turns (1 run in 12).
        watcher.wait(lambda: watcher.serves({"1", "2"}), "both versions to serve")

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


def test_watch_notifies_a_failure_once_then_its_recovery(
    watch: Callable[[str], Watch], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "integration-hmac-key-42"
    monkeypatch.setenv("WATCH_TEST_NOTIFY_KEY", key)
    with Receiver() as receiver:
        (tmp_path / "origin" / "gitops-nodes.yaml").write_text(
            "notifications:\n"
            "  - name: ops\n"
            "    type: webhook\n"
            f"    url: {receiver.url()}\n"
            "    hmacKey: {fromEnv: WATCH_TEST_NOTIFY_KEY}\n"
        )
        watcher, first = serving_v1(watch)
        watcher.wait(lambda: receiver.events() == ["applied"], "the applied message")

        bad = watcher.commit(node_yaml("v1", "1") + "kind: [unclosed\n", "broken")
        assert watcher.hook() == 202
        watcher.wait(lambda: (watcher.status()["lastError"] or {}).get("revision") == bad, "bad")
        seen = watcher.status()["reconciles"]
        watcher.wait(lambda: watcher.status()["reconciles"] >= seen + 3, "three more intervals")
        good = watcher.commit(node_yaml("v1", "2") + alias_yaml("api", {"v1": 100}), "fixed")
        assert watcher.hook() == 202
        watcher.wait(lambda: watcher.applied(good), "the good commit")
        watcher.wait(lambda: len(receiver.events()) >= 3, "the recovery message")

        assert receiver.events() == ["applied", "failed", "recovered"]
        messages = receiver.bodies()
        assert [m.json["revision"] for m in messages] == [first, bad, good]
        assert messages[1].json["outcome"] == "invalid" and "spec.yaml" in messages[1].json["error"]
        for message in messages:
            signed = "sha256=" + hmac.new(key.encode(), message.body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(message.headers["x-gitops-nodes-signature"], signed)
        log = watcher.log.read_text(errors="replace")
        assert receiver.url() not in log and key not in log
