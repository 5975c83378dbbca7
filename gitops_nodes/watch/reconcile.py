"""One reconcile: a revision of the repo made live (load, validate, plan, apply), or refused.

Blocking (Docker calls, health waits): the watch loop runs it in a worker thread, one at a
time. A refused revision changes nothing: a bad spec never reaches Docker, and a failed apply
leaves every alias on the nodes that served it (apply's own guarantee).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any

import orjson

from balancer.table import RoutingTable, TableError, read_table
from gitops_nodes import progress, workflow
from gitops_nodes.apply import ApplyOptions, Outcome, StepResult
from gitops_nodes.errors import GitopsNodesError, RuntimeUnavailable
from gitops_nodes.guards import Refused, check_destroy_budget, check_not_empty
from gitops_nodes.live import LiveState
from gitops_nodes.plan import Plan
from gitops_nodes.rollout import error_rate, gaining, rollout_steps
from gitops_nodes.runtime.base import Runtime
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import SOURCE_PROBLEM, SpecLoader
from gitops_nodes.spec.models import Rollout
from gitops_nodes.spec.notifications import ResolvedTarget
from gitops_nodes.spec.settings import (
    SETTINGS_FILE,
    Settings,
    load_notifications,
    load_settings,
)
from gitops_nodes.spec.state import DesiredState
from gitops_nodes.statedir import WATCH_FILE, StateDir, secret_key
from gitops_nodes.watch.source import Revision, Source

log = logging.getLogger("gitops_nodes.watch")

# Only the newest commit's refusal is ever looked up (the loop does not retry a bad spec);
# a few more are kept for a branch that goes back and forth, and no more: watch runs for
# months, and every bad commit would otherwise stay in memory.
REFUSED_KEPT = 16
# Reconciles that found nothing to change (every interval, when nothing happens) are logged
# at debug level, and counted in one info line this often (seconds).
QUIET_SUMMARY_EVERY = 3600.0
# Reconciles kept in the status's history (and in the state directory's watch file, so the
# history survives a restart); a quiet interval reconcile is counted, not kept.
HISTORY_KEPT = 50


@dataclass(frozen=True)
class ReconcileResult:
    """What one reconcile did, for /-/status, the log and `gitops-nodes status`."""

    revision: str
    summary: str  # the commit's subject
    reason: str  # what triggered it: start, commit, change, hook, interval, drift
    outcome: str  # applied, unchanged, rolling out, invalid, refused, failed, rolled back
    started_at: float  # seconds since the epoch
    seconds: float
    actions: int  # plan steps carried out
    error: str | None = None
    plan: str | None = None  # the plan's summary line (Plan: N to add, ...), when one ran

    @property
    def ok(self) -> bool:
        return self.outcome in ("applied", "unchanged", "rolling out")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["startedAt"] = data.pop("started_at")
        return data


class Reconciler:
    """Makes revisions live, remembering the last good one and the last error."""

    def __init__(
        self,
        project: str,
        state: StateDir,
        connect: Callable[[], Runtime],
        options: ApplyOptions | None = None,
        on_publish: Callable[[RoutingTable], None] | None = None,
        rollouts: bool = True,
        summary_every: float = QUIET_SUMMARY_EVERY,
    ) -> None:
        self.project = project
        # Progressive rollouts are judged on the embedded balancer's traffic; where another
        # balancer serves (a Swarm service), new weights are applied at once, as apply does.
        self.rollouts = rollouts
        self.state = state
        self.connect = connect
        self.options = options or ApplyOptions()
        self.on_publish = on_publish
        # Re-parses only the files a commit changed; secrets are digested with the state
        # directory's key, as plan and apply do.
        self.loader = SpecLoader(secret_key=lambda: secret_key(state))
        self.runtime: Runtime | None = None
        self.applied: Revision | None = None
        self.applied_state: DesiredState | None = None  # kept to heal drift past bad commits
        self.last: ReconcileResult | None = None
        self.last_error: ReconcileResult | None = None
        self.refused: dict[str, ReconcileResult] = {}  # revision -> why it was not applied
        self.rollout: RolloutRun | None = None
        # Where the newest valid revision says to send notifications (watch/notify.py).
        self.notifications: tuple[ResolvedTarget, ...] = ()
        self.summary_every = summary_every
        self.quiet = 0  # reconciles with nothing to change since the last summary line
        self.quiet_since = time.monotonic()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_KEPT)  # oldest first
        # Running instances to replace as not alive, set by the watch loop (live.UNRESPONSIVE).
        self.unresponsive: frozenset[str] = frozenset()

    def reconcile(self, revision: Revision, reason: str) -> ReconcileResult:
        """Load, plan and apply revision; never raises for a bad revision or a failed apply.

        An alias with a `rollout` whose weights change is applied at its first step only;
        `rollout` is then set, and the watch loop calls advance() or roll_back().
        """
        result = _results(revision, reason)
        self.rollout = None
        try:
            desired = self.loader.load(revision.tree)
            settings = load_settings(revision.tree)
            self.notifications = load_notifications(revision.tree, settings)
        except SpecErrors as exc:
            if any(SOURCE_PROBLEM in problem.message for problem in exc.problems):
                # A model source that could not be fetched (a registry down for a while)
                # is tried again on the interval, like a failed apply; a bad spec is not.
                return self._record(result("failed", error=str(exc)))
            return self._record(result("invalid", error=str(exc)))
        guard = _guard(desired, settings)
        staged = self._stage(revision, desired)
        if staged is None:
            return self._apply(revision, desired, result, final=True, check=guard)
        staged.check = guard
        self.rollout = staged
        return self._apply(revision, staged.stages[0], result, final=False, check=guard)

    def advance(self) -> ReconcileResult | None:
        """Apply the rollout's next step; the last one completes the revision."""
        run = self.rollout
        if run is None:
            return None
        run.stage += 1
        final = run.stage == len(run.stages) - 1
        result = _results(run.revision, f"rollout step {run.stage + 1}/{len(run.stages)}")
        outcome = self._apply(
            run.revision, run.stages[run.stage], result, final=final, check=run.check
        )
        if final or not outcome.ok:
            self.rollout = None
        return outcome

    def heal_rollout(self, reason: str) -> ReconcileResult | None:
        """Apply the rollout's current step again, without advancing it: drift, an instance
        gone unresponsive or the interval, while the step waits for its gates (for as long
        as its pauses and minRequests take), are healed as they are outside a rollout."""
        run = self.rollout
        if run is None:
            return None
        result = _results(run.revision, reason)
        stage = run.stages[run.stage]
        return self._apply(run.revision, stage, result, final=False, check=run.check, heal=True)

    def roll_back(self, why: str) -> ReconcileResult | None:
        """Give up the rollout: the last good revision again, and this one refused."""
        run = self.rollout
        self.rollout = None
        if run is None:
            return None
        refused = _results(run.revision, "rollout")
        healed = self.heal(f"rollback of {run.revision.id[:12]}")
        # Recorded once the last good revision serves again: whoever reads "rolled back"
        # (status, a test, an operator's script) may count on the old routes being live.
        self._record(refused("rolled back", error=why))
        if healed is not None:
            self.last = healed
        return healed

    def restore(self, source: Source) -> None:
        """After a restart: remember the last good revision a previous run applied, so drift
        can be healed from it even when the newest commit is bad (nothing is applied here)."""
        saved = read_watch_status(self.state)
        kept = saved.get("history") if saved else None
        if isinstance(kept, list):
            self.history.extend(e for e in kept[-HISTORY_KEPT:] if isinstance(e, dict))
        revision_id = saved.get("appliedRevision") if saved else None
        if not isinstance(revision_id, str):
            return
        revision = source.at(revision_id)
        if revision is None:
            return
        try:
            self.applied_state = self.loader.load(revision.tree)
        except SpecErrors:
            return
        self.applied = revision
        try:  # who hears of a first reconcile that fails, before any is valid
            settings = load_settings(revision.tree)
            self.notifications = load_notifications(revision.tree, settings)
        except SpecErrors as exc:
            log.warning("notifications are off until a revision's settings are valid: %s", exc)

    def heal(self, reason: str) -> ReconcileResult | None:
        """Apply the last good revision again (drift while the newest commit is bad)."""
        if self.applied is None or self.applied_state is None:
            return None
        revision = self.applied
        return self._apply(revision, self.applied_state, _results(revision, reason), final=True)

    def _stage(self, revision: Revision, desired: DesiredState) -> RolloutRun | None:
        """The states a rollout passes through, when one is due; None to apply at once."""
        if not self.rollouts:
            return None
        try:
            published = read_table(self.state.table)
        except TableError:
            return None
        if published is None or self.applied_state is None:
            return None  # nothing to move from, or the old nodes' specs are unknown
        moving = {
            name: (published.aliases[name].targets, alias)
            for name, alias in desired.aliases.items()
            if alias.rollout is not None
            and name in published.aliases
            and published.aliases[name].targets != alias.routes
        }
        if not moving:
            return None
        count = max(len(alias.rollout.steps) + 1 for _, alias in moving.values() if alias.rollout)
        stages = []
        for stage in range(count):
            aliases = dict(desired.aliases)
            nodes = dict(desired.nodes)
            for name, (before, alias) in moving.items():
                assert alias.rollout is not None
                steps = rollout_steps(before, alias.routes, alias.rollout.steps)
                routes = steps[min(stage, len(steps) - 1)]
                aliases[name] = replace(alias, routes=routes)
                for node, weight in routes:  # old nodes keep serving until their share is 0
                    if weight > 0 and node not in nodes and node in self.applied_state.nodes:
                        nodes[node] = self.applied_state.nodes[node]
            stages.append(
                replace(
                    desired,
                    nodes=MappingProxyType(dict(sorted(nodes.items()))),
                    aliases=MappingProxyType(aliases),
                )
            )
        gates = {
            name: (gaining(before, alias.routes), alias.rollout)
            for name, (before, alias) in moving.items()
            if alias.rollout is not None
        }
        pause = max(rollout.pause for _, rollout in gates.values())
        return RolloutRun(revision, stages, gates, pause)

    def _apply(
        self,
        revision: Revision,
        desired: DesiredState,
        result: Callable[..., ReconcileResult],
        final: bool,
        check: Callable[[Plan, LiveState], None] | None = None,
        heal: bool = False,
    ) -> ReconcileResult:
        """Apply one state of revision; check (none when healing a revision applied before)
        may refuse its plan. heal: a rollout's step again, "unchanged" when nothing was to do."""
        try:
            runtime = self._runtime()
            run = workflow.apply(
                desired,
                runtime,
                self.project,
                self.state,
                self.options,
                on_result=_log_step,
                on_publish=self.on_publish,
                on_start=progress.step_started,  # for a live display, on a terminal
                check=check,
                unresponsive=self.unresponsive,
            )
        except Refused as exc:
            return self._record(result("refused", error=str(exc)))
        except RuntimeUnavailable as exc:
            self.runtime = None  # reconnect next time: the engine may come back
            return self._record(result("failed", error=str(exc)))
        except GitopsNodesError as exc:
            return self._record(result("failed", error=str(exc)))
        report = run.report
        done = len(report.with_outcome(Outcome.DONE)) if report else 0
        add, change, destroy = run.plan.summary()
        plan = f"Plan: {add} to add, {change} to change, {destroy} to destroy."
        if report is not None and not report.ok:
            failed = report.with_outcome(Outcome.FAILED)
            error = "; ".join(f"{r.step.id}: {r.detail}" for r in failed)
            return self._record(result("failed", done, error, plan=plan))
        # Whichever trigger ran it (the interval's, drift's, one already under way when the
        # instance was counted unresponsive), the history says why an instance was replaced.
        why = "unresponsive" if run.unresponsive else None
        if not final and heal and report is None:
            return self._record(result("unchanged", done))
        if not final:
            return self._record(result("rolling out", done, plan=plan, also=why))
        self.applied, self.applied_state = revision, desired
        if report is None:
            return self._record(result("unchanged", done))
        return self._record(result("applied", done, plan=plan, also=why))

    def _runtime(self) -> Runtime:
        if self.runtime is None:
            self.runtime = self.connect()
        return self.runtime

    def _record(self, outcome: ReconcileResult) -> ReconcileResult:
        previous, self.last = self.last, outcome
        quiet_poll = (
            outcome.outcome == "unchanged"
            and outcome.reason == "interval"
            and previous is not None
            and previous.revision == outcome.revision
        )
        if not quiet_poll:
            self.history.append(outcome.to_json())
        if not outcome.ok:
            self.last_error = outcome
            self.refused.pop(outcome.revision, None)  # re-inserted: the newest
            self.refused[outcome.revision] = outcome
            while len(self.refused) > REFUSED_KEPT:
                del self.refused[next(iter(self.refused))]
            log.error(
                "reconcile of %s failed (%s): %s",
                outcome.revision[:12],
                outcome.outcome,
                outcome.error,
                extra={"fields": outcome.to_json()},
            )
        else:
            self.refused.pop(outcome.revision, None)
            # A poll that finds the same revision unchanged again is noise; the first look at
            # a revision (after a start, a new commit or a failure) says at info what is live.
            quiet = (
                outcome.outcome == "unchanged"
                and previous is not None
                and previous.ok
                and previous.revision == outcome.revision
            )
            (log.debug if quiet else log.info)(
                "reconcile of %s %s: %d steps in %.2fs",
                outcome.revision[:12],
                outcome.outcome,
                outcome.actions,
                outcome.seconds,
                extra={"fields": outcome.to_json()},
            )
            if quiet:
                self._quiet_summary(outcome)
        self.save()
        return outcome

    def _quiet_summary(self, outcome: ReconcileResult) -> None:
        """Count a reconcile that changed nothing; say how many once per summary_every."""
        self.quiet += 1
        now = time.monotonic()
        if now - self.quiet_since < self.summary_every:
            return
        log.info(
            "%d reconciles in the last %.0fs found nothing to change; %s is live (%s)",
            self.quiet,
            now - self.quiet_since,
            outcome.revision[:12],
            outcome.summary,
            extra={"fields": {"unchanged": self.quiet, "revision": outcome.revision}},
        )
        self.quiet, self.quiet_since = 0, now

    def status(self) -> dict[str, Any]:
        """The watch loop's part of /-/status and of `gitops-nodes status`."""
        return {
            "appliedRevision": self.applied.id if self.applied else None,
            "appliedSummary": self.applied.summary if self.applied else None,
            "applied": self.applied.to_json() if self.applied else None,
            "lastReconcile": self.last.to_json() if self.last else None,
            "lastError": self.last_error.to_json() if self.last_error else None,
            "rollout": self.rollout.status() if self.rollout else None,
            "history": list(self.history),  # oldest first
        }

    def save(self) -> None:
        """Write the status next to the routing table, for `gitops-nodes status` to show."""
        self.state.path.mkdir(parents=True, exist_ok=True)
        # orjson, not json.dump: the standard library's file and indented encoders are its
        # pure-Python one, whose closures refer to each other. Each save left ~30 objects in
        # reference cycles that only a full collection frees; written after every reconcile,
        # they were part of an idle watch's steady RSS growth (README, Running for months).
        text = orjson.dumps({"pid": os.getpid(), **self.status()}, option=orjson.OPT_INDENT_2)
        fd, temp = tempfile.mkstemp(prefix=".watch.", dir=self.state.path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(text)
        os.replace(temp, self.state.path / WATCH_FILE)


@dataclass
class RolloutRun:
    """A revision being rolled out: the states it passes through and how each is judged."""

    revision: Revision
    stages: list[DesiredState]  # the last is the revision's own state
    gates: dict[str, tuple[list[str], Rollout]]  # alias -> (nodes gaining share, its rollout)
    pause: float
    stage: int = 0
    check: Callable[[Plan, LiveState], None] | None = None  # the revision's guards
    seen: dict[str, int] = field(default_factory=dict)  # alias -> requests judged on so far
    rates: dict[str, float | None] = field(default_factory=dict)  # alias -> error rate judged on
    judge_at: float | None = None  # when the next judgement is due (time.time())

    def judge(
        self,
        start: Mapping[str, tuple[int, int]],
        end: Mapping[str, tuple[int, int]],
        healthy: Callable[[str], bool],
    ) -> tuple[bool, str | None]:
        """(ready to advance, why to roll back) at the current stage, on the balancer's
        counters from when the stage began (start) to now (end). A stage is judged on its
        error rate only once the nodes gaining share have had `minRequests` requests; until
        then it is neither passed nor failed (no data is no pass), unless a node has no
        Healthy instance at all."""
        ready = True
        for alias, (nodes, rollout) in self.gates.items():
            for node in nodes:
                if not healthy(node):
                    return False, f"alias {alias}: node {node} has no Healthy instance"
            if not nodes:
                continue  # no node's share grows: nothing to judge
            requests, rate = error_rate(start, end, nodes)
            self.seen[alias] = requests
            self.rates[alias] = rate if requests else None
            if requests < rollout.min_requests:
                ready = False  # not enough traffic to judge yet: wait another pause
                continue
            if rate > rollout.max_error_rate:
                return False, (
                    f"alias {alias}: {rate:.1%} of {requests} requests to "
                    f"{', '.join(nodes)} failed, over the {rollout.max_error_rate:.1%} bound"
                )
        return ready, None

    def begin_stage(self) -> None:
        """A stage starts: its requests are counted from zero."""
        self.seen = {}
        self.rates = {}

    def status(self) -> dict[str, Any]:
        return {
            "revision": self.revision.id,
            "step": self.stage + 1,
            "steps": len(self.stages),
            "aliases": {
                name: [list(route) for route in self.stages[self.stage].aliases[name].routes]
                for name in self.gates
            },
            # Per alias, the weights the revision ends with.
            "targets": {
                name: [list(route) for route in self.stages[-1].aliases[name].routes]
                for name in self.gates
            },
            "nextJudgementAt": self.judge_at,
            # Per alias: the requests the step has seen to the nodes gaining share, and how
            # many more it needs before it is judged.
            "requests": {
                name: {
                    "seen": self.seen.get(name, 0),
                    "minRequests": rollout.min_requests,
                    "needed": max(0, rollout.min_requests - self.seen.get(name, 0)),
                    "nodes": nodes,
                    "errorRate": self.rates.get(name),
                    "maxErrorRate": rollout.max_error_rate,
                }
                for name, (nodes, rollout) in self.gates.items()
            },
        }


def _guard(desired: DesiredState, settings: Settings) -> Callable[[Plan, LiveState], None]:
    """What watch refuses of a revision (gitops_nodes/guards.py), as its settings allow."""

    def check(plan: Plan, live: LiveState) -> None:
        if not (desired.nodes or desired.aliases):
            if settings.allow_empty:
                return  # meant, destroying everything: no budget applies
            check_not_empty(desired, live, f"set `allowEmpty: true` in its {SETTINGS_FILE}")
        check_destroy_budget(plan, live, settings.destroy_budget)

    return check


def _results(revision: Revision, reason: str) -> Callable[..., ReconcileResult]:
    """A maker of results for one reconcile of revision, timed from now."""
    started = time.time()
    clock = time.monotonic()

    def result(
        outcome: str,
        actions: int = 0,
        error: str | None = None,
        plan: str | None = None,
        also: str | None = None,
    ) -> ReconcileResult:
        """also: one more reason, found while reconciling, added to the triggers' (sorted)."""
        triggers = reason.split(",")
        if also and also not in triggers:
            triggers = sorted([*triggers, also])
        return ReconcileResult(
            revision.id,
            revision.summary,
            ",".join(triggers),
            outcome,
            started,
            time.monotonic() - clock,
            actions,
            error,
            plan,
        )

    return result


def read_watch_status(state: StateDir) -> dict[str, Any] | None:
    """What the watch loop last saved for this project, if it ever ran."""
    try:
        data = json.loads((state.path / WATCH_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _log_step(result: StepResult) -> None:
    progress.step_ended(result)
    if result.outcome is not Outcome.NOT_STARTED:
        log.info(
            "%s: %s in %.2fs, %s",
            result.step.id,
            result.outcome.value,
            result.seconds,
            result.detail,
        )
