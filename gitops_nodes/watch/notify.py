"""watch's notifications: which reconciles are news (transitions only), and their delivery.

Transitions turns the loop's stream of reconcile results into events: a failure is news once
(the same revision failing again on every interval is not), then its recovery; a revision
applied, drift healed, a rollout's step and its rollback are news each time. The Notifier
hands each event to one Sender per target: a bounded queue and a thread that posts it,
retrying with backoff, so a slow or dead receiver never holds a reconcile up. A target's URL
and key are never logged: log lines name the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gitops_nodes import __version__
from gitops_nodes.httpdeadline import Watchdog
from gitops_nodes.spec.notifications import ResolvedTarget
from gitops_nodes.watch.reconcile import ReconcileResult

log = logging.getLogger("gitops_nodes.watch.notify")

SIGNATURE_HEADER = "X-Gitops-Nodes-Signature"
EVENT_HEADER = "X-Gitops-Nodes-Event"
QUEUE_SIZE = 100  # events waiting per target; past it the oldest is dropped (and logged)
ATTEMPTS = 6  # tries per event: after 1, 2, 4, 8 and 16 s (with the default backoff)
BACKOFF = 1.0  # seconds before the first retry, doubled after each
SEND_TIMEOUT = 10.0  # seconds for one POST, connection included

# What the loop ran: a revision reconciled, the last good one re-applied, a rollout step
# taken, a rollout given up.
Kind = str  # "reconcile" | "heal" | "advance" | "rollback"


@dataclass(frozen=True)
class Event:
    """Something watch tells its targets about: one message each."""

    event: str  # applied, failed, recovered, driftHealed, rolloutStep, rolledBack
    project: str
    result: ReconcileResult
    applied: bool = False  # a revision newly made live (a recovery may be one)

    def wanted_by(self, target: ResolvedTarget) -> bool:
        if self.event in target.events:
            return True
        # A recovery that applies a new revision is one message: it counts as both.
        return self.applied and "applied" in target.events

    def to_json(self) -> dict[str, Any]:
        result = self.result
        return {
            "event": self.event,
            "project": self.project,
            "text": self.text(),
            "revision": result.revision,
            "summary": result.summary,
            "outcome": result.outcome,
            "reason": result.reason,
            "steps": result.actions,
            "plan": result.plan,
            "error": result.error,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(result.started_at)),
        }

    def text(self) -> str:
        """One or two lines for people (a chat message)."""
        r = self.result
        at = f"{r.revision[:12]} ({r.summary})" if r.summary else r.revision[:12]
        plan = f" {r.plan}" if r.plan else f" {r.actions} steps."
        head = {
            "applied": f"applied {at}.{plan}",
            "failed": f"reconcile of {at} failed ({r.outcome}): {r.error}",
            "recovered": f"recovered: {at} {r.outcome}.{plan if r.actions else ''}".rstrip(),
            "driftHealed": f"drift healed at {at}: {r.actions} steps ({r.reason}).",
            "rolloutStep": f"rollout of {at}: {r.reason}, {r.outcome}.",
            "rolledBack": f"rolled back {at}: {r.error}",
        }[self.event]
        return f"gitops-nodes {self.project}: {head}"


class Transitions:
    """Which results are news; remembers the failure last told, so it is told once."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.failing: tuple[str, str] | None = None  # (revision, outcome) last told as failed

    def events(
        self,
        kind: Kind,
        result: ReconcileResult | None,
        applied_before: str | None,
        rolled_back: ReconcileResult | None = None,
    ) -> list[Event]:
        """The events of one reconcile: kind is what the loop ran, applied_before the
        revision live before it, rolled_back the record of a rollout given up."""
        if kind == "rollback" and rolled_back is not None:
            self.failing = (rolled_back.revision, rolled_back.outcome)
            return [self._event("rolledBack", rolled_back)]
        if result is None:
            return []
        if not result.ok:
            told = (result.revision, result.outcome)
            if self.failing == told:
                return []  # the same failure again (on the interval): told already
            self.failing = told
            return [self._event("failed", result)]
        new = result.outcome == "applied" and result.revision != applied_before
        # A heal re-applies the last good revision: it ends only a failure of its own (the
        # engine gone), not that of a newer bad commit, which still stands.
        if self.failing is not None and (kind != "heal" or self.failing[0] == result.revision):
            self.failing = None
            return [self._event("recovered", result, applied=new)]
        if result.outcome == "rolling out":
            return [self._event("rolloutStep", result)]
        if result.outcome != "applied":
            return []  # unchanged: nothing happened
        if kind == "advance":
            return [self._event("applied", result, applied=True)]  # the rollout's last step
        if new:
            return [self._event("applied", result, applied=True)]
        return [self._event("driftHealed", result)]

    def _event(self, name: str, result: ReconcileResult, applied: bool = False) -> Event:
        return Event(name, self.project, result, applied)


def body_of(event: Event, target: ResolvedTarget) -> bytes:
    """What a target is sent: the event as JSON, or Slack's {"text": ...}."""
    data = {"text": event.text()} if target.type == "slack" else event.to_json()
    text = json.dumps(data, ensure_ascii=False)
    for secret in target.secrets:  # never echo a target's own URL or key back
        text = text.replace(secret, "***")
    return text.encode()


def signature(key: bytes, body: bytes) -> str:
    """The signature header's value: sha256=<hex HMAC-SHA256 of the body>."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class SendError(Exception):
    """One delivery attempt failed; retry says whether another might succeed."""

    def __init__(self, why: str, retry: bool) -> None:
        super().__init__(why)
        self.retry = retry


def post(target: ResolvedTarget, event: str, body: bytes, timeout: float) -> None:
    """POST body to target once; raises SendError saying why (without the URL)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"gitops-nodes/{__version__}",
        EVENT_HEADER: event,
    }
    if target.hmac_key is not None:
        headers[SIGNATURE_HEADER] = signature(target.hmac_key, body)
    request = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
    # timeout bounds the whole POST, not only each read: a receiver that drips its answer
    # would otherwise hold its sender (and the events queued behind) as long as it liked.
    with Watchdog(timeout) as watchdog:
        try:
            with watchdog.opener(_NoRedirect()).open(request, timeout=timeout) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            # Worth another try: the receiver's own trouble, or its asking to slow down.
            retry = exc.code >= 500 or exc.code in (408, 429)
            raise SendError(f"HTTP {exc.code}", retry) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = getattr(reason, "strerror", None) or type(reason).__name__
            raise SendError(_late(watchdog, str(why), timeout), True) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:  # resets, bad answers
            raise SendError(_late(watchdog, type(exc).__name__, timeout), True) from None
        if watchdog.expired:  # the shut socket read as the end of the answer
            raise SendError(_late(watchdog, "", timeout), True)


def _late(watchdog: Watchdog, why: str, timeout: float) -> str:
    return f"no whole answer within {timeout:g}s" if watchdog.expired else why


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook answers; it does not send the event (and its signature) elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Sender:
    """One target's queue and the thread that delivers it, in order, with retries."""

    def __init__(
        self,
        target: ResolvedTarget,
        backoff: float = BACKOFF,
        attempts: int = ATTEMPTS,
        timeout: float = SEND_TIMEOUT,
        send: Callable[[ResolvedTarget, str, bytes, float], None] = post,
    ) -> None:
        self.target = target
        self.backoff = backoff
        self.attempts = attempts
        self.timeout = timeout
        self.send = send
        self.queue: queue.Queue[Event | None] = queue.Queue(QUEUE_SIZE)
        self.stop = threading.Event()
        self.sent = 0
        self.dropped = 0
        self.thread = threading.Thread(target=self._run, name=f"notify-{target.name}", daemon=True)
        self.thread.start()

    def submit(self, event: Event) -> None:
        """Queue event without waiting; when the queue is full the oldest goes."""
        while True:
            try:
                self.queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    continue
                self.dropped += 1
                log.warning(
                    "notifications to %s are %d behind; the oldest was dropped",
                    self.target.name,
                    QUEUE_SIZE,
                )

    def close(self, timeout: float) -> None:
        """Deliver what is queued within timeout, then stop (what is left is dropped)."""
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=timeout)
        self.thread.join(timeout)
        self.stop.set()  # a retry's wait ends now
        self.thread.join(0.5)

    def _run(self) -> None:
        while True:
            event = self.queue.get()
            if event is None or self.stop.is_set():
                return  # closed: what is still queued is dropped
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        body = body_of(event, self.target)
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                self.send(self.target, event.event, body, self.timeout)
            except SendError as exc:
                last = attempt == self.attempts or not exc.retry
                log.warning(
                    "notification %s to %s failed (%s)%s",
                    event.event,
                    self.target.name,
                    exc,
                    "; given up" if last else f"; retrying in {delay:g}s",
                    extra={"fields": {"target": self.target.name, "attempt": attempt}},
                )
                if last or self.stop.wait(delay):
                    return
                delay *= 2
                continue
            self.sent += 1
            log.debug("notification %s sent to %s", event.event, self.target.name)
            return


class Notifier:
    """The watch loop's side: events from results, to the targets of the newest good
    settings, each through its own Sender."""

    def __init__(
        self,
        project: str,
        backoff: float = BACKOFF,
        attempts: int = ATTEMPTS,
        timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.transitions = Transitions(project)
        self.backoff = backoff
        self.attempts = attempts
        self.timeout = timeout
        self.senders: dict[ResolvedTarget, Sender] = {}
        self.lock = threading.Lock()
        self.closed = False  # a reconcile finishing after close() starts no sender again

    def use(self, targets: Iterable[ResolvedTarget]) -> None:
        """Send to targets from now on; a target that is gone finishes its queue and stops."""
        wanted = set(targets)
        with self.lock:
            if self.closed:
                return
            for target in list(self.senders):
                if target not in wanted:
                    sender = self.senders.pop(target)
                    threading.Thread(target=sender.close, args=(SEND_TIMEOUT,), daemon=True).start()
            for target in wanted - set(self.senders):
                self.senders[target] = Sender(target, self.backoff, self.attempts, self.timeout)

    def observe(
        self,
        kind: Kind,
        result: ReconcileResult | None,
        applied_before: str | None,
        rolled_back: ReconcileResult | None = None,
    ) -> list[Event]:
        """Queue the events of one reconcile for the targets that want them; never waits."""
        events = self.transitions.events(kind, result, applied_before, rolled_back)
        with self.lock:
            senders = list(self.senders.values())
        for event in events:
            for sender in senders:
                if event.wanted_by(sender.target):
                    sender.submit(event)
        return events

    def close(self, timeout: float) -> None:
        """Give every queue up to timeout (in all) to be delivered, then stop."""
        with self.lock:
            self.closed = True
            senders, self.senders = list(self.senders.values()), {}
        deadline = time.monotonic() + timeout
        for sender in senders:
            sender.close(max(0.0, deadline - time.monotonic()))
