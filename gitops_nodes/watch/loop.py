"""The GitOps loop: follow the repo, reconcile on change, on drift and on a timer, serve traffic.

Everything that asks for a reconcile (a new commit found by polling, a webhook, a saved file in
a work tree, a container that died, the interval) only adds a reason and wakes the loop; the
loop runs one reconcile at a time in a worker thread, so whatever arrives meanwhile is
coalesced into the next one. The balancer runs in the same event loop and gets each routing
table handed over in-process the moment apply publishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from balancer.server import Balancer, ServeOptions
from gitops_nodes.errors import GitopsNodesError
from gitops_nodes.watch.detail import describe_node
from gitops_nodes.watch.hooks import HookBodyError, hook_admits
from gitops_nodes.watch.memory import give_back_free_memory
from gitops_nodes.watch.notify import Notifier
from gitops_nodes.watch.reconcile import Reconciler, ReconcileResult, RolloutRun
from gitops_nodes.watch.source import Revision, Source

log = logging.getLogger("gitops_nodes.watch")

HEALING = frozenset({"drift", "engine", "interval", "retry", "start", "unresponsive"})
RETRY_AFTER_FAILURE = 5.0  # seconds before an unreachable source or engine is tried again
DETAIL_EVERY = 2.0  # seconds a node's detail (spec, log lines) is reused for its page
DRIFT_JOIN = 0.1  # seconds a stopping watch gives the drift thread before it exits anyway
REPLACE_UNHEALTHY_AFTER = 60.0  # seconds Unhealthy, checks failing, before a replacement
UNRESPONSIVE_EVERY = 1.0  # seconds between looks at the balancer's health for those


class WatchLoop:
    """Owns the triggers and runs reconciles one at a time."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        source: Source,
        reconciler: Reconciler,
        balancer: Balancer,
        interval: float,
        hook_token: str | None,
        drift: Callable[[Callable[[str], None], threading.Event], None] | None = None,
        notifier: Notifier | None = None,
        replace_unhealthy_after: float = REPLACE_UNHEALTHY_AFTER,
    ) -> None:
        self.loop = loop
        self.source = source
        self.reconciler = reconciler
        self.balancer = balancer
        self.interval = interval
        self.hook_token = hook_token
        self.drift = drift
        self.notifier = notifier
        self.replace_unhealthy_after = replace_unhealthy_after  # 0: never
        self.reasons: set[str] = set()
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.thread_stop = threading.Event()
        self.source_error: str | None = None
        self.reconciling = False
        self.reconciles = 0
        self.rollout_task: asyncio.Task[None] | None = None
        self.busy = asyncio.Lock()  # one reconcile, heal or rollout step at a time
        balancer.extra_routes.append(Route("/-/hooks/git", self.hook, methods=["POST"]))
        balancer.open_paths.add("/-/hooks/git")  # a forge sends the hook token, not the admin key
        balancer.extra_status = self.status
        # The web console's actions (balancer/console/) and a node's detail on its page.
        balancer.console.actions["reconcile"] = self.reconcile_now
        balancer.console.actions["rollback"] = self.roll_back_now
        balancer.node_detail = self.node_detail
        self._details: dict[str, tuple[float, dict[str, Any]]] = {}  # node -> (when, detail)

    # -- triggers -------------------------------------------------------------------------

    def trigger(self, reason: str) -> None:
        """Ask for a reconcile (event loop thread only; use trigger_threadsafe elsewhere)."""
        self.reasons.add(reason)
        self.wake.set()

    def trigger_threadsafe(self, reason: str) -> None:
        self.loop.call_soon_threadsafe(self.trigger, reason)

    async def hook(self, request: Request) -> Response:
        """POST /-/hooks/git: fetch now. Protected by a token from the environment."""
        if not self.hook_token:
            return JSONResponse(
                {"error": "the git hook is off: set GITOPS_NODES_HOOK_TOKEN to turn it on"},
                status_code=401,
            )
        try:
            admitted = await hook_admits(request, self.hook_token)
        except HookBodyError as exc:
            return JSONResponse({"error": str(exc)}, exc.status, {"connection": "close"})
        except ClientDisconnect:  # gone: nobody reads an answer
            return Response(status_code=400, headers={"connection": "close"})
        if not admitted:
            return JSONResponse(
                {
                    "error": "missing or wrong token: send Authorization: Bearer <token>, "
                    "X-Gitlab-Token, or X-Hub-Signature-256 (the token as the webhook's secret)"
                },
                status_code=401,
            )
        self.trigger("hook")
        return JSONResponse({"accepted": True}, status_code=202)

    async def reconcile_now(self) -> dict[str, Any]:
        """The console's "reconcile now": what the interval does (fetch, apply what changed,
        heal drift), at once."""
        self.trigger("console")
        return {"accepted": True, "action": "reconcile"}

    async def roll_back_now(self) -> dict[str, Any]:
        """The console's "roll back this rollout": what a failed judgement does."""
        async with self.busy:  # never beside a step the rollout driver is taking
            run = self.reconciler.rollout
            if run is None:
                return {"accepted": False, "error": "no rollout is in progress"}
            task, self.rollout_task = self.rollout_task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            log.warning("rolling back %s: asked for on the console", run.revision.id[:12])
            await self._run(self.reconciler.roll_back, "rolled back from the web console")
        return {"accepted": True, "action": "rollback", "revision": run.revision.id}

    async def node_detail(self, name: str) -> dict[str, Any] | None:
        """A node's spec as applied and its instances' recent log lines, for its page; read
        from the engine at most every DETAIL_EVERY seconds per node, however many watch it."""
        now = time.monotonic()
        cached = self._details.get(name)
        if cached is not None and now - cached[0] < DETAIL_EVERY:
            return cached[1]
        detail = await self.loop.run_in_executor(None, describe_node, self.reconciler, name)
        self._details = {n: c for n, c in self._details.items() if now - c[0] < DETAIL_EVERY}
        self._details[name] = (now, detail)
        return detail

    async def _ticker(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.interval)
            if not self.stopping.is_set():
                self.trigger("interval")

    async def _replace_unresponsive(self) -> None:
        """Hand the reconciler the instances the balancer has counted Unhealthy, their checks
        failing, for replace_unhealthy_after; reconcile when one is new. On one engine nothing
        else replaces a container whose process hangs: it stays up, refused no connection, and
        without this its node would stay short of it (with one instance, down) for good."""
        after = self.replace_unhealthy_after
        reconciler = self.reconciler
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), UNRESPONSIVE_EVERY)
            now = time.monotonic()
            stuck = frozenset(
                backend.instance
                for backend in self.balancer.backends.by_key.values()
                if not backend.removed and backend.failing_for(now) >= after
            )
            new = stuck - reconciler.unresponsive
            reconciler.unresponsive = stuck  # read by the reconcile's thread: one reference
            if new:
                log.warning(
                    "replacing %s: Unhealthy, its health checks failing, for %gs or more",
                    ", ".join(sorted(new)),
                    after,
                )
                self.trigger("unresponsive")

    async def _follow_changes(self) -> None:
        async for _ in self.source.changes(self.stopping):
            self.trigger("change")

    # -- the loop -------------------------------------------------------------------------

    async def run(self, options: ServeOptions, drain_timeout: float = 30.0) -> None:
        """Serve and reconcile until stop(); then finish the reconcile in progress and drain."""
        await self.balancer.start(options)
        tasks = [
            self.loop.create_task(self._ticker()),
            self.loop.create_task(self._follow_changes()),
        ]
        if self.replace_unhealthy_after > 0:
            tasks.append(self.loop.create_task(self._replace_unresponsive()))
        drift_thread = None
        if self.drift is not None:
            drift_thread = threading.Thread(
                target=self.drift,
                args=(self.trigger_threadsafe, self.thread_stop),
                name="drift",
                daemon=True,
            )
            drift_thread.start()
        await self.loop.run_in_executor(None, self.reconciler.restore, self.source)
        self.trigger("start")
        while not self.stopping.is_set():
            await self.wake.wait()
            self.wake.clear()
            if self.stopping.is_set():
                break
            reasons, self.reasons = self.reasons, set()
            await self._reconcile(reasons)
        self.thread_stop.set()
        if self.rollout_task is not None:
            tasks.append(self.rollout_task)  # a rollout stops where it is, at a published step
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.balancer.shutdown(drain_timeout)
        if drift_thread is not None:
            # It notices thread_stop at the end of its current one-second window of engine
            # events; being a daemon, it does not hold the process up meanwhile (R-stop).
            drift_thread.join(timeout=DRIFT_JOIN)

    def stop(self) -> None:
        """Begin a graceful stop (safe from a signal handler on the loop)."""
        self.stopping.set()
        self.wake.set()

    async def _reconcile(self, reasons: set[str]) -> None:
        reason = ",".join(sorted(reasons))
        try:
            revision: Revision = await self.loop.run_in_executor(None, self.source.poll)
        except GitopsNodesError as exc:
            self.source_error = str(exc)
            log.error("cannot read %s: %s", self.source.describe(), exc)
            self.loop.call_later(RETRY_AFTER_FAILURE, self.trigger, "retry")
            return
        self.source_error = None
        async with self.busy:  # the rollout driver takes its steps under the same lock
            await self._reconcile_revision(revision, reasons, reason)

    async def _reconcile_revision(self, revision: Revision, reasons: set[str], reason: str) -> None:
        reconciler = self.reconciler
        rollout = reconciler.rollout
        if rollout is not None:
            if rollout.revision.id == revision.id:
                # Its own driver moves this revision along; meanwhile its step is healed.
                if reasons & HEALING:
                    await self._run(reconciler.heal_rollout, reason)
                return
            await self._cancel_rollout()  # a newer commit takes over from today's weights
        applied = reconciler.applied
        unchanged = applied is not None and applied.id == revision.id
        if reasons <= {"change", "hook", "retry"} and unchanged:
            return  # nothing new to apply, and nobody asked to look for drift
        refused = reconciler.refused.get(revision.id)
        if refused is not None:
            # The newest commit is bad. Its error stands until a new commit, but drift is
            # still healed, from the last good revision. A failed apply (say an instance
            # that never became Healthy) is tried again on the interval; a bad spec is not.
            retry = refused.outcome == "failed" and "interval" in reasons
            if not retry:
                if reasons & HEALING and applied is not None:
                    await self._run(reconciler.heal, reason)
                return
        result = await self._run(reconciler.reconcile, revision, reason)
        if result is not None and result.error and "Docker engine" in result.error:
            self.loop.call_later(RETRY_AFTER_FAILURE, self.trigger, "retry")
        elif (
            result is not None
            and not result.ok
            and reasons & HEALING
            and reconciler.applied is not None
            and reconciler.applied.id != revision.id
        ):
            # Whatever a failed apply got to is undone, and drift (or a restart after it)
            # healed: the last good revision, again.
            await self._run(reconciler.heal, reason)
        if reconciler.rollout is not None:
            self.rollout_task = self.loop.create_task(self._drive_rollout())

    async def _cancel_rollout(self) -> None:
        task, self.rollout_task = self.rollout_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.reconciler.rollout = None

    async def _drive_rollout(self) -> None:
        """Advance the rollout step by step while its gates hold; roll back when one fails."""
        reconciler = self.reconciler
        current: tuple[RolloutRun, int] | None = None
        start: dict[str, tuple[int, int]] = {}
        while (run := reconciler.rollout) is not None:
            if current is None or current[0] is not run or current[1] != run.stage:
                # A new step: judged on the requests from now on, over as many pauses as
                # it takes to see minRequests of them.
                current, start = (run, run.stage), self._counters()
                run.begin_stage()
            run.judge_at = time.time() + run.pause
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), run.pause)
            async with self.busy:
                if self.stopping.is_set() or reconciler.rollout is not run:
                    return
                ready, failure = run.judge(start, self._counters(), self._healthy)
                if failure is not None:
                    log.error("rolling back %s: %s", run.revision.id[:12], failure)
                    await self._run(reconciler.roll_back, failure)
                    return
                if ready:
                    await self._run(reconciler.advance)

    def _counters(self) -> dict[str, tuple[int, int]]:
        """Requests and 5xx answers per node so far, from the balancer's own counters."""
        counts = {}
        for node, series in self.balancer.metrics.nodes.items():
            codes = series.codes
            counts[node] = (sum(codes.values()), sum(n for c, n in codes.items() if c >= 500))
        return counts

    def _healthy(self, node: str) -> bool:
        route = self.balancer.router.nodes.get(node)
        return route is not None and route.has_healthy()

    async def _run(self, work: Callable[..., ReconcileResult | None], *args: Any) -> Any:
        self.reconciling = True
        applied = self.reconciler.applied
        try:
            result = await self.loop.run_in_executor(None, work, *args)
        except Exception:  # a bug must not end the loop: log it whole and carry on
            log.exception("reconcile raised; the loop carries on")
            self.loop.call_later(RETRY_AFTER_FAILURE, self.trigger, "retry")
            return None
        finally:
            self.reconciling = False
            self.reconciles += 1
        # A quiet reconcile leaves no garbage in reference cycles; anything else may (an
        # apply's plan graph): collected now, not when the heap has grown by a quarter.
        changed = result is None or result.outcome != "unchanged"
        await self.loop.run_in_executor(None, give_back_free_memory, changed)
        if self.notifier is not None:
            self._notify(work, result, applied.id if applied else None)
        return result

    def _notify(
        self,
        work: Callable[..., ReconcileResult | None],
        result: ReconcileResult | None,
        applied_before: str | None,
    ) -> None:
        """Hand the notifier what happened (it queues, never waits on a receiver)."""
        assert self.notifier is not None
        reconciler = self.reconciler
        kinds = {
            reconciler.reconcile: "reconcile",
            reconciler.heal: "heal",
            reconciler.advance: "advance",
            reconciler.roll_back: "rollback",
        }
        kind = kinds.get(work, "reconcile")
        rolled_back = reconciler.last_error if kind == "rollback" else None
        self.notifier.use(reconciler.notifications)
        self.notifier.observe(kind, result, applied_before, rolled_back)

    def status(self) -> dict[str, Any]:
        """The `watch` part of /-/status."""
        return {
            "watch": {
                "source": self.source.describe(),
                "sourceError": self.source_error,
                "interval": self.interval,
                # 0: never; unresponsive: the instances it is replacing for that (see there)
                "replaceUnhealthyAfter": self.replace_unhealthy_after,
                "unresponsive": sorted(self.reconciler.unresponsive),
                "reconciling": self.reconciling,
                "reconciles": self.reconciles,
                "now": time.time(),
                **self.reconciler.status(),
            }
        }
