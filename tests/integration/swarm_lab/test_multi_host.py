"""The Swarm runtime on three hosts: the lab of scripts/swarm-lab (fixtures in conftest.py).

What these cover: the example's kinds of nodes spread over three hosts, every host's
balancer serving every alias and reaching instances on the other hosts over the overlay;
images reaching the workers through a registry and through the workers' engines; a rolling
replacement under load through every host's balancer; a host lost under load (failed
requests and recovery measured and printed), then back without duplicates; a worker that
joins later getting the images before our tasks land on it. And that the lab script leaves
nothing behind when `up` fails half-way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import APP_DIR

from ..helpers import alias_yaml, comparable_plan, node_yaml
from .lab import REGISTRY, ROOT, Lab, LabRepo, Load, call, lab_traces, swarm_lab, wait_until

pytestmark = pytest.mark.swarm_lab

EXAMPLE = ROOT / "example-repo"
# The example's image nodes (built from its sentiment folder) and its stateful python node,
# at three instances each, and a python node that answers where it runs. (Its iris nodes
# need scikit-learn's wheels: their image is the same kind as counter's, and slower to make.)
WHERE_NODE = """
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: where}
spec:
  python:
    code: ../models/where.py
    inputs: {x: float}
    outputs: {host: str, echo: float}
  instances: 3
  healthCheck: {path: /healthz, interval: 1s, startTimeout: 60s}
---
"""
COUNTER_NODE = """
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: counter}
spec:
  python:
    code: ../models/counter/count.py
    inputs: {value: float}
    outputs: {seen: int, mean: float}
  instances: 3
  healthCheck: {path: /healthz, interval: 1s, startTimeout: 60s}
---
"""


def example_repo(repo: LabRepo) -> None:
    """The example's sentiment and counter nodes and aliases, laid out as in example-repo/,
    sentiment-v1 at 3 instances, and the where node."""
    shutil.copytree(EXAMPLE / "nodes" / "sentiment", repo.root / "nodes" / "sentiment")
    (repo.root / "models" / "counter").mkdir(parents=True)
    shutil.copy(EXAMPLE / "models" / "counter" / "count.py", repo.root / "models" / "counter")
    where = "import socket\n\nhost = socket.gethostname()  # the task's container id\necho = x\n"
    (repo.root / "models" / "where.py").write_text(where)
    sentiment = (EXAMPLE / "nodes" / "sentiment.yaml").read_text()
    assert "  instances: 2\n" in sentiment
    sentiment = sentiment.replace("  instances: 2\n", "  instances: 3\n", 1)
    (repo.root / "nodes" / "sentiment.yaml").write_text(sentiment)
    (repo.root / "nodes" / "python.yaml").write_text(COUNTER_NODE + WHERE_NODE)
    (repo.root / "aliases").mkdir()
    shutil.copy(EXAMPLE / "aliases" / "sentiment.yaml", repo.root / "aliases")
    more = alias_yaml("counter", {"counter": 100}) + alias_yaml("where", {"where": 100})
    (repo.root / "aliases" / "python.yaml").write_text(more.lstrip("\n"))


def _without_builds(plan: dict[str, Any]) -> dict[str, Any]:
    changes = [{k: v for k, v in c.items() if k != "build"} for c in plan["changes"]]
    steps = [s for s in plan["steps"] if not s.startswith("('build'")]
    return {**plan, "changes": changes, "steps": steps}


def test_a_failed_up_leaves_nothing_behind(lab_lock: None) -> None:
    """`up` that fails half-way (here: an image to copy that does not exist, its last step)
    removes what it made; `down` of nothing is fine too."""
    if swarm_lab("status").returncode == 0:
        pytest.fail("a swarm lab is up already: `scripts/swarm-lab down` first", pytrace=False)
    assert swarm_lab("down").returncode == 0  # nothing there: nothing to do, no error
    env_image = "gitops-nodes/no-such-image:none"
    failed = _up_with_images(env_image)
    assert failed.returncode != 0
    assert env_image in failed.stderr and "removing what was made" in failed.stderr
    assert lab_traces() == []


def _up_with_images(images: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "swarm-lab"), "up"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "SWARM_LAB_IMAGES": images},
    )


def test_the_example_spreads_over_three_hosts_through_a_registry(
    lab: Lab, lab_repo: Callable[[str], LabRepo]
) -> None:
    repo = lab_repo(f"registry: {REGISTRY}/lab")
    example_repo(repo)
    on_three = repo.cli("plan", str(repo.root), "--json")
    on_one = repo.cli("plan", str(repo.root), "--json", "--runtime", "docker", on_the_lab=False)
    assert on_three.returncode == 0 and on_one.returncode == 0, on_three.stderr + on_one.stderr
    # The same plan as on one host (this machine's engine, where the project has nothing),
    # but for the builds: each engine has the images it has (this machine's may hold ours).
    three, one = (
        _without_builds(comparable_plan(json.loads(p.stdout))) for p in (on_three, on_one)
    )
    assert three == one and three["changes"]

    started = time.monotonic()
    applied = repo.apply()
    took = time.monotonic() - started
    print(f"\napply of the example over three hosts (registry): {took:.1f}s")

    assert "Apply complete" in applied.stdout
    every = {h.hostname for h in lab.hosts}
    for node in ("sentiment-v1", "counter", "where"):
        assert repo.lab.task_hosts(repo.service(node)) == Counter(dict.fromkeys(every, 1)), node
    assert lab.task_hosts(f"{repo.project}--balancer") == Counter(dict.fromkeys(every, 1))
    # Our images by their registry name: pushed by the manager, pulled by the workers.
    manager = lab.client(lab.manager).api
    image = manager.inspect_service(repo.service("sentiment-v1"))["Spec"]["TaskTemplate"]
    reference = image["ContainerSpec"]["Image"]
    assert reference.startswith(f"{REGISTRY}/lab/gitops-nodes/"), reference
    for worker in lab.workers:
        tags = {t for i in lab.client(worker).api.images() for t in i.get("RepoTags") or ()}
        assert reference.split("@")[0] in tags, (worker.hostname, sorted(tags))
    status, catalog = call(REGISTRY.split(":")[0], 5000, "GET", "/v2/_catalog")
    assert status == 200 and any(r.startswith("lab/gitops-nodes/") for r in catalog["repositories"])

    for host in lab.hosts:  # every host's balancer serves every alias
        status, answer = call(
            host.address, repo.port, "POST", "/aliases/sentiment/predict", {"text": "great"}
        )
        assert status == 200 and answer["label"] == "positive", (host.hostname, answer)
        status, answer = call(host.address, repo.port, "POST", "/aliases/counter/", {"value": 2.0})
        assert status == 200 and answer["mean"] == 2.0, (host.hostname, answer)
        reached: Counter[str | None] = Counter()
        for _ in range(30):
            status, answer = call(host.address, repo.port, "POST", "/aliases/where/", {"x": 1.0})
            assert status == 200, answer
            reached[lab.container_host(answer["host"])] += 1
        # From any host's data port to instances on every host, over the overlay.
        assert set(reached) == every, (host.hostname, reached)

    view = repo.status()
    where = next(n for n in view["nodes"] if n["name"] == "where")
    assert sorted(i["hostname"] for i in where["instances"]) == sorted(every)
    assert all(i["status"] == "Healthy" for n in view["nodes"] for i in n["instances"])
    text = repo.cli("status", str(repo.root)).stdout
    assert all(hostname in text for hostname in every), text
    assert repo.plan_is_empty()


def test_images_reach_the_workers_engines_and_a_rolling_replacement_fails_nothing(
    lab: Lab, lab_repo: Callable[[str], LabRepo]
) -> None:
    engines = ", ".join(f"{w.hostname}: '{w.url}'" for w in lab.workers)
    repo = lab_repo(f"engines: {{{engines}}}")
    shutil.copytree(APP_DIR, repo.root / "app")
    repo.write(node_yaml("api", "1", instances=3) + alias_yaml("api", {"api": 100}))

    repo.apply()

    every = {h.hostname for h in lab.hosts}
    assert lab.task_hosts(repo.service("api")) == Counter(dict.fromkeys(every, 1))
    manager = lab.client(lab.manager).api
    spec = manager.inspect_service(repo.service("api"))["Spec"]["TaskTemplate"]
    image = spec["ContainerSpec"]["Image"]
    assert image.startswith("gitops-nodes/"), image  # no registry: the name as built
    for worker in lab.workers:  # saved on the manager, loaded through the worker's socket
        assert lab.client(worker).api.inspect_image(image)["RepoTags"], worker.hostname

    load = Load(tuple((h.address, repo.port) for h in lab.hosts), "/aliases/api/").start()
    try:
        wait_until(lambda: load.total() > 60, "the load to be served through every host")
        repo.write(node_yaml("api", "2", instances=3) + alias_yaml("api", {"api": 100}))
        started = time.monotonic()
        replaced = repo.apply()
        took = time.monotonic() - started
        print(f"\nrolling replacement of 3 instances over three hosts: {took:.1f}s")
        assert '-/+ node "api"' in replaced.stdout
        wait_until(lambda: load.served["2"] > 60, "version 2 to serve the load")
    finally:
        load.finish()
    print(f"under load: {len(load.failures)} failed of {load.total()} through three balancers")
    assert load.failures == [], load.failures[:5]
    assert set(load.last_ok) == {h.address for h in lab.hosts}
    for host in lab.hosts:
        status, answer = call(host.address, repo.port, "GET", "/aliases/api/")
        assert status == 200 and answer["version"] == "2", host.hostname
    # Start-first, each new task starts beside the old one it replaces, on the host with the
    # fewest tasks of the service at that moment: the spread may not survive (Swarm does not
    # rebalance), the count does.
    placed = lab.task_hosts(repo.service("api"))
    print(f"after the replacement, tasks per host: {dict(placed)}")
    assert sum(placed.values()) == 3
    assert repo.plan_is_empty()


def test_a_lost_state_directory_is_taken_over_without_replacing_a_task(
    lab: Lab, lab_repo: Callable[[str], LabRepo]
) -> None:
    """The machine that applied loses its state directory (a fresh CI runner): the services
    on the cluster are another state directory's by their owner label, so nothing is planned
    over them without --adopt (R-own); with --adopt the plan says "No changes" (the table
    read back from the balancers) and the apply takes them over as they are, under load
    through every host without a failed request."""
    repo = lab_repo(f"registry: {REGISTRY}/lab")
    shutil.copytree(APP_DIR, repo.root / "app")
    repo.write(node_yaml("api", "1", instances=3) + alias_yaml("api", {"api": 100}))
    repo.apply()
    tasks = {t["ID"] for t in lab.running_tasks(repo.service("api"))}
    balancers = {t["ID"] for t in lab.running_tasks(f"{repo.project}--balancer")}
    shutil.rmtree(repo.state.path)

    planned = repo.cli("plan", str(repo.root))
    print(f"\nplan with the state directory lost:\n{planned.stdout}{planned.stderr}")
    assert planned.returncode == 0, planned.stderr
    assert "owned by another state directory" in planned.stdout
    load = Load(tuple((h.address, repo.port) for h in lab.hosts), "/aliases/api/").start()
    try:
        wait_until(lambda: load.total() > 60, "the load to be served through every host")
        adopted = repo.cli("plan", str(repo.root), "--adopt")
        assert adopted.returncode == 0, adopted.stderr
        assert adopted.stdout.startswith("No changes."), adopted.stdout
        taken = repo.cli("apply", str(repo.root), "--adopt")
        assert taken.returncode == 0, taken.stdout + taken.stderr
        wait_until(lambda: _quiet(load, 3.0), "3 s without a failure", 60)
    finally:
        load.finish()
    print(f"apply --adopt under load: {len(load.failures)} failed of {load.total()}")
    for _when, where, what in load.failures[:5]:
        print(f"  {where} {what}")
    assert {t["ID"] for t in lab.running_tasks(repo.service("api"))} == tasks
    # The token the balancers hold was taken up: they kept running, no new secret.
    assert {t["ID"] for t in lab.running_tasks(f"{repo.project}--balancer")} == balancers
    assert load.failures == [], load.failures[:5]
    assert repo.plan_is_empty()


def _instances(view: dict[str, Any], node: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = next(n for n in view["nodes"] if n["name"] == node)["instances"]
    return found


def test_a_host_lost_under_load_fails_few_requests_and_comes_back_without_duplicates(
    lab: Lab, lab_repo: Callable[[str], LabRepo]
) -> None:
    repo = lab_repo(f"registry: {REGISTRY}/lab")
    shutil.copytree(APP_DIR, repo.root / "app")
    repo.write(node_yaml("api", "1", instances=3) + alias_yaml("api", {"api": 100}))
    repo.apply()
    lost = lab.host("worker-2")
    every = {h.hostname for h in lab.hosts}
    assert lab.task_hosts(repo.service("api")) == Counter(dict.fromkeys(every, 1))
    survivors = tuple((h.address, repo.port) for h in lab.hosts if h != lost)
    log = repo.root.parent / "watch.log"
    watching = repo.watch(log)  # and a watch meanwhile, which must not fight Swarm
    load = Load(survivors, "/aliases/api/").start()
    marks: dict[str, float] = {}
    during: list[tuple[float, str, str]] = []  # the failures while the host was lost
    try:
        wait_until(lambda: "reconcile of" in log.read_text(), "watch's first reconcile", 120)
        wait_until(lambda: load.total() > 60, "the load to be served")
        marks["cut"] = time.monotonic()
        assert swarm_lab("cut", lost.name).returncode == 0

        def lost_unhealthy() -> bool:
            found = _instances(repo.status(), "api")
            return any(i["hostname"] == lost.hostname and i["status"] == "Unhealthy" for i in found)

        wait_until(lost_unhealthy, f"status to show the instance on {lost.hostname} Unhealthy", 90)
        marks["unhealthy"] = time.monotonic()

        def replaced() -> bool:
            found = _instances(repo.status(), "api")
            healthy = [i for i in found if i["status"] == "Healthy"]
            return len(healthy) == 3 and all(i["hostname"] != lost.hostname for i in healthy)

        wait_until(replaced, "three Healthy instances on the other hosts", 120)
        marks["replaced"] = time.monotonic()
        assert repo.plan_is_empty()  # the lost task is Swarm's to stop, not the plan's
        wait_until(lambda: load.total() > 0 and _quiet(load, 5.0), "5 s without a failure", 60)
        during = list(load.failures)

        marks["mend"] = time.monotonic()
        assert swarm_lab("mend", lost.name).returncode == 0
        lab.wait_ready()
        marks["back"] = time.monotonic()
        wait_until(
            lambda: _running_here(lab, lost, repo.service("api")) == 0,
            f"Swarm to stop the old task on {lost.hostname}",
            90,
        )
        wait_until(lambda: len(lab.running_tasks(f"{repo.project}--balancer")) == 3, "balancers")
        wait_until(lambda: _quiet(load, 5.0), "5 s without a failure after the return", 60)
    finally:
        load.finish()
        watching.terminate()
        code = watching.wait(timeout=90)
    watched = log.read_text()
    assert code == 0, watched[-3000:]
    reconciles = [line for line in watched.splitlines() if "reconcile of" in line]
    print(f"watch meanwhile: {len(reconciles)} reconciles logged (quiet ones are not)")
    for line in reconciles[-8:]:
        print(f"  {line[:200]}")
    assert not [line for line in reconciles if " failed " in line], watched[-3000:]
    cut = marks["cut"]
    last = max((when for when, _, _ in during), default=cut)
    print(
        f"\nhost lost under load: {len(during)} failed of {load.total()} requests; failures "
        f"until {last - cut:.1f}s after the cut; status Unhealthy at "
        f"{marks['unhealthy'] - cut:.1f}s, three Healthy elsewhere at "
        f"{marks['replaced'] - cut:.1f}s; after the return: "
        f"{len(load.failures) - len(during)} failed"
    )
    for when, where, what in during[:10]:
        print(f"  {when - cut:6.2f}s {where} {what}")
    assert len(during) <= 200, during[:5]  # bounded: a figure the README states, see above
    assert load.failures[len(during) :] == []  # the host's return fails nothing
    # Nothing duplicated: three tasks of the node in all, on every host's engine together.
    running = sum(_running_here(lab, h, repo.service("api")) for h in lab.hosts)
    assert running == 3
    assert len(lab.running_tasks(repo.service("api"))) == 3
    assert repo.plan_is_empty()
    again = repo.apply()
    assert "No changes." in again.stdout


def _quiet(load: Load, seconds: float) -> bool:
    with load.lock:
        last = max((when for when, _, _ in load.failures), default=0.0)
    return time.monotonic() - last >= seconds


def _running_here(lab: Lab, host: Any, service: str) -> int:
    """How many containers of the service run on the host's engine (not the manager's view)."""
    selector = {"label": [f"com.docker.swarm.service.name={service}"]}
    return len(lab.client(host).api.containers(filters=selector))


def test_a_worker_that_joins_later_gets_the_images_before_our_tasks(
    lab: Lab, lab_repo: Callable[[str], LabRepo]
) -> None:
    late = lab.host("worker-2")
    manager = lab.client(lab.manager)
    worker = lab.client(late)
    worker.swarm.leave(force=True)
    old_id = next(i for i, name in lab.node_hostnames().items() if name == late.hostname)
    wait_until(
        lambda: manager.api.inspect_node(old_id)["Status"]["State"] == "down", "the node down"
    )
    manager.api.remove_node(old_id, force=True)
    try:
        engines = ", ".join(f"{w.hostname}: '{w.url}'" for w in lab.workers)
        repo = lab_repo(f"engines: {{{engines}}}")
        shutil.copytree(APP_DIR, repo.root / "app")
        repo.write(node_yaml("api", "1", instances=2) + alias_yaml("api", {"api": 100}))
        repo.apply()
        image = manager.api.inspect_service(repo.service("api"))["Spec"]["TaskTemplate"][
            "ContainerSpec"
        ]["Image"]
        assert not worker.api.images(name=image)  # it was not there to get it
    finally:
        token = manager.api.inspect_swarm()["JoinTokens"]["Worker"]
        worker.api.join_swarm(
            [f"{lab.manager.address}:2377"],
            token,
            listen_addr=f"{late.address}:2377",
            advertise_addr=late.address,
        )
        lab.wait_ready()

    repo.write(node_yaml("api", "1", instances=3) + alias_yaml("api", {"api": 100}))
    repo.apply()  # ships the images to the new worker first, then scales the service

    assert worker.api.inspect_image(image)["RepoTags"]
    every = {h.hostname for h in lab.hosts}
    assert lab.task_hosts(repo.service("api")) == Counter(dict.fromkeys(every, 1))
    new_id = next(i for i, name in lab.node_hostnames().items() if name == late.hostname)
    on_it = manager.api.tasks(filters={"service": repo.service("api"), "node": new_id})
    # Its first task there ran: none was rejected for want of the image.
    assert [t["Status"]["State"] for t in on_it] == ["running"], [t["Status"] for t in on_it]
    balancers = manager.api.tasks(filters={"service": f"{repo.project}--balancer"})
    errors = Counter(t["Status"].get("Err", "") for t in balancers if t["NodeID"] == new_id)
    print(f"\nthe late worker's balancer tasks (the service is global): {dict(errors)}")
    status, answer = call(late.address, repo.port, "GET", "/aliases/api/")
    assert status == 200 and answer["version"] == "1", answer
    assert repo.plan_is_empty()
