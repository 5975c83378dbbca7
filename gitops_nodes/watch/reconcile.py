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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from balancer.table import RoutingTable
from gitops_nodes import workflow
from gitops_nodes.apply import ApplyOptions, Outcome, StepResult
from gitops_nodes.errors import GitopsNodesError, RuntimeUnavailable
from gitops_nodes.runtime.base import Runtime
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import SpecLoader
from gitops_nodes.spec.state import DesiredState
from gitops_nodes.statedir import StateDir
from gitops_nodes.watch.source import Revision

log = logging.getLogger("gitops_nodes.watch")

WATCH_FILE = "watch.json"


@dataclass(frozen=True)
class ReconcileResult:
    """What one reconcile did, for /-/status, the log and `gitops-nodes status`."""

    revision: str
    summary: str  # the commit's subject
    reason: str  # what triggered it: start, commit, change, hook, interval, drift
    outcome: str  # applied, unchanged, invalid, failed
    started_at: float  # seconds since the epoch
    seconds: float
    actions: int  # plan steps carried out
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("applied", "unchanged")

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
    ) -> None:
        self.project = project
        self.state = state
        self.connect = connect
        self.options = options or ApplyOptions()
        self.on_publish = on_publish
        self.loader = SpecLoader()  # re-parses only the files a commit changed
        self.runtime: Runtime | None = None
        self.applied: Revision | None = None
        self.applied_state: DesiredState | None = None  # kept to heal drift past bad commits
        self.last: ReconcileResult | None = None
        self.last_error: ReconcileResult | None = None
        self.refused: dict[str, ReconcileResult] = {}  # revision -> why it was not applied

    def reconcile(self, revision: Revision, reason: str) -> ReconcileResult:
        """Load, plan and apply revision; never raises for a bad revision or a failed apply."""
        started = time.time()
        clock = time.monotonic()

        def result(outcome: str, actions: int = 0, error: str | None = None) -> ReconcileResult:
            return ReconcileResult(
                revision.id,
                revision.summary,
                reason,
                outcome,
                started,
                time.monotonic() - clock,
                actions,
                error,
            )

        try:
            desired = self.loader.load(revision.tree)
        except SpecErrors as exc:
            return self._record(result("invalid", error=str(exc)))
        return self._apply(revision, desired, result)

    def heal(self, reason: str) -> ReconcileResult | None:
        """Apply the last good revision again (drift while the newest commit is bad)."""
        if self.applied is None or self.applied_state is None:
            return None
        started = time.time()
        clock = time.monotonic()
        revision = self.applied

        def result(outcome: str, actions: int = 0, error: str | None = None) -> ReconcileResult:
            return ReconcileResult(
                revision.id,
                revision.summary,
                reason,
                outcome,
                started,
                time.monotonic() - clock,
                actions,
                error,
            )

        return self._apply(revision, self.applied_state, result)

    def _apply(
        self,
        revision: Revision,
        desired: DesiredState,
        result: Callable[..., ReconcileResult],
    ) -> ReconcileResult:
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
            )
        except RuntimeUnavailable as exc:
            self.runtime = None  # reconnect next time: the engine may come back
            return self._record(result("failed", error=str(exc)))
        except GitopsNodesError as exc:
            return self._record(result("failed", error=str(exc)))
        report = run.report
        if report is None:
            self.applied, self.applied_state = revision, desired
            return self._record(result("unchanged"))
        done = len(report.with_outcome(Outcome.DONE))
        if not report.ok:
            failed = report.with_outcome(Outcome.FAILED)
            error = "; ".join(f"{r.step.id}: {r.detail}" for r in failed)
            return self._record(result("failed", done, error))
        self.applied, self.applied_state = revision, desired
        return self._record(result("applied", done))

    def _runtime(self) -> Runtime:
        if self.runtime is None:
            self.runtime = self.connect()
        return self.runtime

    def _record(self, outcome: ReconcileResult) -> ReconcileResult:
        self.last = outcome
        if not outcome.ok:
            self.last_error = outcome
            self.refused[outcome.revision] = outcome
            log.error(
                "reconcile of %s failed (%s): %s",
                outcome.revision[:12],
                outcome.outcome,
                outcome.error,
                extra={"fields": outcome.to_json()},
            )
        else:
            self.refused.pop(outcome.revision, None)
            log.info(
                "reconcile of %s %s: %d steps in %.2fs",
                outcome.revision[:12],
                outcome.outcome,
                outcome.actions,
                outcome.seconds,
                extra={"fields": outcome.to_json()},
            )
        self.save()
        return outcome

    def status(self) -> dict[str, Any]:
        """The watch loop's part of /-/status and of `gitops-nodes status`."""
        return {
            "appliedRevision": self.applied.id if self.applied else None,
            "appliedSummary": self.applied.summary if self.applied else None,
            "lastReconcile": self.last.to_json() if self.last else None,
            "lastError": self.last_error.to_json() if self.last_error else None,
        }

    def save(self) -> None:
        """Write the status next to the routing table, for `gitops-nodes status` to show."""
        self.state.path.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".watch.", dir=self.state.path)
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid(), **self.status()}, handle, indent=2)
        os.replace(temp, self.state.path / WATCH_FILE)


def read_watch_status(state: StateDir) -> dict[str, Any] | None:
    """What the watch loop last saved for this project, if it ever ran."""
    try:
        data = json.loads((state.path / WATCH_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _log_step(result: StepResult) -> None:
    if result.outcome is not Outcome.NOT_STARTED:
        log.info(
            "%s: %s in %.2fs, %s",
            result.step.id,
            result.outcome.value,
            result.seconds,
            result.detail,
        )
