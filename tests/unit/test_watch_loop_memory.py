"""The watch loop on the memory runtime, with a stand-in balancer whose counters the test
sets: rollouts are judged only on enough requests (R-data), refused revisions keep the last
good state serving (R-prune). Real pauses of 20 ms; no Docker, no sockets."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from balancer.backends import Backend, Backends
from balancer.console import Console
from balancer.server import Balancer, ServeOptions
from balancer.table import Endpoint, HealthSettings, RoutingTable, read_table
from gitops_nodes.apply import ApplyOptions
from gitops_nodes.runtime.memory import Faults, MemoryRuntime, VirtualClock
from gitops_nodes.statedir import StateDir
from gitops_nodes.watch.loop import WatchLoop
from gitops_nodes.watch.reconcile import Reconciler
from gitops_nodes.watch.source import Revision
from tests.unit.test_reconcile_memory import PROJECT, Repo, alias_doc, node_doc


@dataclass
class Series:
    codes: dict[int, int] = field(default_factory=dict)


@dataclass
class Route:
    healthy: bool = True

    def has_healthy(self) -> bool:
        return self.healthy


class StandInBalancer:
    """What the loop reads of the embedded balancer: per-node counters and health."""

    def __init__(self) -> None:
        self.extra_routes: list[Any] = []
        self.extra_status: Any = None
        self.open_paths: set[str] = set()
        self.console = Console()  # the loop registers its actions there
        self.node_detail: Any = None
        self.metrics = type("Metrics", (), {"nodes": {}})()
        self.router = type("Router", (), {"nodes": {}})()
        self.backends = Backends()  # what the test puts there: the loop reads their health
        self.tables: list[RoutingTable] = []

    def swap(self, table: RoutingTable) -> None:
        self.tables.append(table)
        self.router.nodes = {name: Route() for name in table.nodes}

    def count(self, node: str, code: int, requests: int) -> None:
        series = self.metrics.nodes.setdefault(node, Series())
        series.codes[code] = series.codes.get(code, 0) + requests

    async def start(self, options: ServeOptions) -> None:
        return None

    async def shutdown(self, drain_timeout: float) -> None:
        return None


class ListSource:
    """The newest of the revisions a test commits; no change notifications (the test wakes
    the loop itself)."""

    def __init__(self) -> None:
        self.revisions: list[Revision] = []

    @property
    def last(self) -> Revision | None:
        return self.revisions[-1] if self.revisions else None

    def describe(self) -> str:
        return "memory"

    def poll(self) -> Revision:
        return self.revisions[-1]

    def at(self, revision_id: str) -> Revision | None:
        return next((r for r in self.revisions if r.id == revision_id), None)

    async def changes(self, stop: asyncio.Event) -> AsyncIterator[None]:
        await stop.wait()
        return
        yield


class Harness:
    def __init__(self, tmp_path: Path, replace_unhealthy_after: float = 60.0) -> None:
        self.runtime = MemoryRuntime(VirtualClock(), Faults())
        self.runtime.fleet(PROJECT).start()
        self.repo = Repo(tmp_path / "repo")
        self.source = ListSource()
        self.balancer = StandInBalancer()
        self.state = StateDir(tmp_path / "state")
        self.loop = asyncio.new_event_loop()
        options = ApplyOptions(
            parallelism=1, drain_timeout=1, stop_grace=1, clock=self.runtime.clock
        )

        def publish(table: RoutingTable) -> None:
            self.loop.call_soon_threadsafe(self.balancer.swap, table)

        self.reconciler = Reconciler(
            PROJECT,
            self.state,
            lambda: self.runtime,
            options,
            on_publish=publish,
        )
        self.watch = WatchLoop(
            self.loop,
            self.source,
            self.reconciler,
            # a stand-in: what the loop reads of the balancer (metrics, router, start, shutdown)
            cast(Balancer, self.balancer),
            3600.0,  # no timer: the test wakes the loop with each commit
            None,
            replace_unhealthy_after=replace_unhealthy_after,
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop.run_until_complete(self.watch.run(ServeOptions("127.0.0.1", 0), 0.1))

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.watch.stop)
            self.thread.join(timeout=10)
        self.loop.close()

    def commit(self, *documents: dict[str, object], settings: str | None = None) -> str:
        revision = self.repo.commit(*documents, settings=settings)
        self.source.revisions.append(revision)
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.watch.trigger, "hook")
        else:
            self.thread.start()  # the loop's first reconcile ("start") takes it
        return revision.id

    def status(self) -> dict[str, Any]:
        return self.reconciler.status()

    def call(self, coroutine: Any) -> Any:
        """Run coroutine on the loop's thread, as the control plane does; its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def wait(self, what: str, check: Callable[[], bool], seconds: float = 10.0) -> None:
        done = threading.Event()
        for _ in range(int(seconds / 0.01)):
            if check():
                return
            done.wait(0.01)  # polling the loop's thread against a deadline
        raise AssertionError(f"timed out waiting for {what}: {self.status()}")

    def idle(self) -> bool:
        """No reconcile or rollout step under way: what one changed, it has also recorded."""
        return not self.watch.busy.locked()

    def entries(self) -> int:
        return len(self.status()["history"])

    def entry_after(self, kept: int, what: str) -> dict[str, Any]:
        """The history entry recorded after the first `kept`, once there is one: a reconcile
        changes instances before it records itself, so their change alone does not say it has."""
        self.wait(what, lambda: self.entries() > kept)
        entry: dict[str, Any] = self.status()["history"][kept]
        return entry

    def routes(self, alias: str) -> object:
        table = read_table(self.state.table)
        return table.aliases[alias].targets if table and alias in table.aliases else None


def rollout_alias(*routes: tuple[str, int], extra: str = "") -> dict[str, object]:
    doc = alias_doc("api", *routes)
    spec = doc["spec"]
    assert isinstance(spec, dict)
    spec["rollout"] = {"steps": [50], "pause": "20ms", "maxErrorRate": 0.1}
    return doc


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def start_v1(h: Harness) -> str:
    first = h.commit(node_doc("v1"), rollout_alias(("v1", 100)))
    h.wait("v1 applied", lambda: h.status()["appliedRevision"] == first and h.idle())
    return first


def test_a_change_is_followed_by_a_full_collection_and_a_quiet_poll_is_not(
    harness: Harness,
) -> None:
    """An apply leaves garbage in reference cycles (networkx's plan graph): collected at once,
    not once the heap has grown by a quarter; a quiet poll, every interval, leaves none and
    pays for no collection (watch/memory.py)."""
    full: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    def quiet_poll(h: Harness) -> None:
        # Reconciles take turns: this one runs after whatever runs now, and after its
        # collection. (The count of a reconcile grows after the status it writes.)
        done = h.watch.reconciles
        h.loop.call_soon_threadsafe(h.watch.trigger, "interval")
        h.wait(
            "a quiet poll",
            lambda: (
                h.watch.reconciles > done and h.status()["lastReconcile"]["outcome"] == "unchanged"
            ),
        )

    with harness as h:
        start_v1(h)
        quiet_poll(h)  # v1's apply and its collection are over
        gc.disable()  # only the collections the loop asks for, none the allocator would
        gc.callbacks.append(count)
        try:
            quiet_poll(h)
            second = h.commit(node_doc("v1", "2"), rollout_alias(("v1", 100)))
            h.wait("the change applied", lambda: h.status()["appliedRevision"] == second)
            h.wait("a full collection", lambda: len(full) > 0)
            # Reconciles take turns, each with its collection: the quiet poll's would be in.
            assert len(full) == 1
        finally:
            gc.callbacks.remove(count)
            gc.enable()


def test_a_rollout_without_traffic_is_never_promoted(harness: Harness) -> None:
    with harness as h:
        first = start_v1(h)
        h.commit(node_doc("v2", "2"), rollout_alias(("v2", 100)))
        h.wait("step 1", lambda: (h.status()["rollout"] or {}).get("step") == 1 and h.idle())
        # The step is driven by a task started after its reconcile: once it has a judgement
        # due, fifteen pauses of 20 ms with no request, in which nothing may happen.
        h.wait(
            "step 1's judgement due",
            lambda: (h.status()["rollout"] or {}).get("nextJudgementAt") is not None,
        )
        time.sleep(0.3)

        rollout = h.status()["rollout"]
        assert rollout is not None and rollout["step"] == 1, h.status()
        assert rollout["requests"]["api"] == {
            "seen": 0,
            "minRequests": 20,
            "needed": 20,
            "nodes": ["v2"],
            "errorRate": None,  # no request yet: no rate
            "maxErrorRate": 0.1,
        }
        assert rollout["targets"] == {"api": [["v2", 100]]}
        assert rollout["nextJudgementAt"] is not None
        assert h.status()["appliedRevision"] == first
        assert h.routes("api") == (("v2", 500), ("v1", 500))
        assert {c.node for c in h.runtime.containers.values()} == {"v1", "v2"}

        h.balancer.count("v2", 200, 12)  # some traffic: not yet enough to judge
        h.wait("12 seen", lambda: h.status()["rollout"]["requests"]["api"]["seen"] == 12)
        assert h.status()["rollout"]["requests"]["api"]["needed"] == 8
        h.balancer.count("v2", 200, 8)
        h.wait("the rollout to finish", lambda: h.status()["rollout"] is None)
        assert h.routes("api") == (("v2", 100),)


def test_a_rollout_is_rolled_back_once_enough_requests_failed(harness: Harness) -> None:
    with harness as h:
        first = start_v1(h)
        bad = h.commit(node_doc("v2", "2"), rollout_alias(("v2", 100)))
        h.wait("step 1", lambda: (h.status()["rollout"] or {}).get("step") == 1 and h.idle())
        # The step's counting has begun: its driver took the counters, then set the judgement.
        h.wait("the first judgement due", lambda: h.status()["rollout"]["nextJudgementAt"])
        h.balancer.count("v2", 500, 5)  # failures, but too few to judge on
        time.sleep(0.1)  # five pauses: still not judged
        assert h.status()["rollout"] is not None
        removing, go_on = threading.Event(), threading.Event()
        remove = h.runtime.remove_instance

        def held_remove(project: str, name: str) -> None:
            removing.set()
            go_on.wait(10)  # the rollback's heal waits here, v2 still there
            remove(project, name)

        h.runtime.remove_instance = held_remove  # type: ignore[method-assign]
        h.balancer.count("v2", 500, 15)

        assert removing.wait(10), "the rollback never began removing v2"
        # Not reported before it is done: a reader of "rolled back" may count on v1 alone.
        assert (h.status()["lastError"] or {}).get("revision") != bad
        go_on.set()
        h.wait("the rollback", lambda: (h.status()["lastError"] or {}).get("revision") == bad)
        assert h.status()["lastError"]["outcome"] == "rolled back"
        assert "100.0% of 20 requests to v2 failed" in h.status()["lastError"]["error"]
        assert h.status()["appliedRevision"] == first
        assert h.routes("api") == (("v1", 100),)
        assert {c.node for c in h.runtime.containers.values()} == {"v1"}
        assert h.status()["lastReconcile"]["reason"] == f"rollback of {bad[:12]}"


def test_an_empty_commit_is_refused_and_the_last_good_state_keeps_serving(
    harness: Harness,
) -> None:
    with harness as h:
        first = start_v1(h)
        before = set(h.runtime.containers)
        empty = h.commit()
        h.wait("the refusal", lambda: (h.status()["lastError"] or {}).get("revision") == empty)

        assert h.status()["lastError"]["outcome"] == "refused"
        assert "allowEmpty: true" in h.status()["lastError"]["error"]
        assert h.status()["appliedRevision"] == first
        assert set(h.runtime.containers) == before
        assert h.routes("api") == (("v1", 100),)


def test_the_consoles_roll_back_action_rolls_the_rollout_back(harness: Harness) -> None:
    with harness as h:
        first = start_v1(h)
        assert h.call(h.balancer.console.actions["rollback"]())["accepted"] is False
        moving = h.commit(node_doc("v2", "2"), rollout_alias(("v2", 100)))
        h.wait("step 1", lambda: (h.status()["rollout"] or {}).get("step") == 1 and h.idle())

        answer = h.call(h.balancer.console.actions["rollback"]())

        assert answer == {"accepted": True, "action": "rollback", "revision": moving}
        assert h.status()["rollout"] is None
        assert h.status()["lastError"]["outcome"] == "rolled back"
        assert h.status()["lastError"]["error"] == "rolled back from the web console"
        assert h.status()["appliedRevision"] == first
        h.wait("v1 alone again", lambda: h.routes("api") == (("v1", 100),))
        h.balancer.count("v2", 200, 40)  # traffic that would have promoted it: too late
        time.sleep(0.1)
        assert h.status()["rollout"] is None and h.routes("api") == (("v1", 100),)


def test_the_consoles_reconcile_action_runs_a_reconcile(harness: Harness) -> None:
    with harness as h:
        start_v1(h)
        assert not any(e["reason"] == "console" for e in h.reconciler.history)
        assert h.call(h.balancer.console.actions["reconcile"]())["accepted"] is True
        # By its reason in the history, not by the count of reconciles: the start's own
        # reconcile may still be counted after v1 shows as applied.
        h.wait(
            "a reconcile for the console",
            lambda: any(e["reason"] == "console" for e in list(h.reconciler.history)),
        )


def test_an_instance_unhealthy_too_long_is_replaced_and_the_reason_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gitops_nodes.watch.loop.UNRESPONSIVE_EVERY", 0.02)
    with Harness(tmp_path, replace_unhealthy_after=5.0) as h:
        start_v1(h)
        kept = h.entries()
        [hung] = h.runtime.list_instances(PROJECT)
        backend = Backend("v1", Endpoint(hung.name, "127.0.0.1", 1), HealthSettings())
        backend.mark_unhealthy("GET /healthz failed: timed out")
        backend.fails = 3

        def failing(seconds: float) -> None:  # on the loop's thread, which reads them
            backend.unhealthy_since = time.monotonic() - seconds
            h.balancer.backends.by_key[backend.key] = backend

        h.loop.call_soon_threadsafe(failing, 4.0)  # not yet long enough
        time.sleep(0.1)  # several looks (every 20 ms): none may replace it yet
        assert h.reconciler.unresponsive == frozenset()
        assert [i.name for i in h.runtime.list_instances(PROJECT)] == [hung.name]

        h.loop.call_soon_threadsafe(failing, 6.0)
        h.wait(
            "a replacement, and the hung instance removed",
            lambda: [i.name for i in h.runtime.list_instances(PROJECT)] not in ([hung.name], []),
        )
        h.wait("the hung one gone", lambda: len(h.runtime.list_instances(PROJECT)) == 1)
        last = h.entry_after(kept, "the replacement's reconcile recorded")
        assert last["reason"] == "unresponsive" and last["outcome"] == "applied"
        table = read_table(h.state.table)
        assert table is not None
        [published] = table.nodes["v1"].endpoints
        assert published.instance != hung.name


def names(h: Harness, node: str | None = None) -> list[str]:
    return [i.name for i in h.runtime.list_instances(PROJECT) if node in (None, i.node)]


def test_a_reconcile_that_replaces_an_unresponsive_instance_says_so_whatever_ran_it(
    tmp_path: Path,
) -> None:
    # The instance may be counted unresponsive while another reconcile (the interval's, drift's)
    # is under way: that one replaces it, and its history entry must still say why.
    with Harness(tmp_path, replace_unhealthy_after=0) as h:
        start_v1(h)
        kept = h.entries()
        [hung] = h.runtime.list_instances(PROJECT)
        h.reconciler.unresponsive = frozenset({hung.name})

        h.loop.call_soon_threadsafe(h.watch.trigger, "interval")

        h.wait("the hung one replaced", lambda: hung.name not in names(h))
        last = h.entry_after(kept, "its reconcile recorded")
        assert (last["reason"], last["outcome"]) == ("interval,unresponsive", "applied")
        assert last["actions"] > 0
        h.reconciler.unresponsive = frozenset()
        h.loop.call_soon_threadsafe(h.watch.trigger, "drift")
        h.wait("a quiet reconcile", lambda: h.status()["history"][-1]["reason"] == "drift")
        assert h.status()["history"][-1]["outcome"] == "unchanged"


def test_a_rollout_waiting_at_a_step_is_healed_without_being_advanced(tmp_path: Path) -> None:
    # A step waits for its gates as long as its traffic takes: an instance that hangs (or a
    # container that dies) meanwhile is replaced then, not at the rollout's next step.
    with Harness(tmp_path, replace_unhealthy_after=0) as h:
        start_v1(h)
        h.commit(node_doc("v2", "2"), rollout_alias(("v2", 100)))
        h.wait("step 1", lambda: (h.status()["rollout"] or {}).get("step") == 1 and h.idle())
        kept = h.entries()
        [hung] = names(h, "v1")  # the old node, still taking half the traffic
        h.reconciler.unresponsive = frozenset({hung})

        h.loop.call_soon_threadsafe(h.watch.trigger, "unresponsive")

        h.wait("v1's hung instance replaced", lambda: names(h, "v1") not in ([hung], []))
        h.wait("and removed", lambda: len(names(h, "v1")) == 1)
        last = h.entry_after(kept, "the healing reconcile recorded")
        assert (last["reason"], last["outcome"]) == ("unresponsive", "rolling out")
        assert (h.status()["rollout"] or {}).get("step") == 1
        assert h.routes("api") == (("v2", 500), ("v1", 500))

        h.reconciler.unresponsive = frozenset()
        kept, reconciles = len(h.status()["history"]), h.watch.reconciles
        h.loop.call_soon_threadsafe(h.watch.trigger, "interval")
        h.wait("a quiet interval reconcile", lambda: h.watch.reconciles > reconciles)
        assert len(h.status()["history"]) == kept  # counted, not kept, as outside a rollout
        assert (h.status()["rollout"] or {}).get("step") == 1
