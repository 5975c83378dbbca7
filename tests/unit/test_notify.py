"""watch's notifications: told on transitions only, signed, retried, never holding a reconcile
up. The watch loop runs on the memory runtime; the receivers are real HTTP servers on
127.0.0.1 that the tests start."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.notifications import ResolvedTarget
from gitops_nodes.spec.settings import load_notifications, parse_settings
from gitops_nodes.watch.notify import Event, Notifier, Sender, Transitions, body_of
from gitops_nodes.watch.reconcile import ReconcileResult
from tests.receiver import Receiver
from tests.unit.test_reconcile_memory import alias_doc, node_doc
from tests.unit.test_watch_loop_memory import Harness
from tests.waiting import wait_until

KEY = "a-test-hmac-key-0123456789"


def settings_for(hook: str, slack: str, extra: str = "") -> str:
    return (
        "notifications:\n"
        "  - name: ops\n"
        "    type: webhook\n"
        f"    url: {hook}\n"
        "    hmacKey: {fromEnv: TEST_NOTIFY_KEY}\n"
        "  - name: chat\n"
        "    type: slack\n"
        "    urlFrom: {fromEnv: TEST_SLACK_URL}\n"
        "    events: [failed, recovered]\n" + extra
    )


BAD_NODE: dict[str, object] = {
    "apiVersion": "gitops-nodes/v1",
    "kind": "Node",
    "metadata": {"name": "v1"},
    "spec": {"image": {"name": "busybox", "port": 8080}, "replicaz": 2},
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def with_notifier(h: Harness, backoff: float = 0.05, timeout: float = 10.0) -> Notifier:
    notifier = Notifier("mem", backoff=backoff, attempts=4, timeout=timeout)
    h.watch.notifier = notifier
    return notifier


def interval(h: Harness) -> None:
    h.loop.call_soon_threadsafe(h.watch.trigger, "interval")


def test_a_failed_commit_then_a_good_one_gives_exactly_two_messages(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_NOTIFY_KEY", KEY)
    monkeypatch.setenv("TEST_SLACK_URL", receiver.url("/slack"))
    settings = settings_for(receiver.url("/hook"), "")
    with Harness(tmp_path) as h:
        notifier = with_notifier(h)
        first = h.commit(node_doc("v1"), alias_doc("api", ("v1", 100)), settings=settings)
        h.wait("v1 applied", lambda: h.status()["appliedRevision"] == first)
        wait_until(lambda: receiver.events("/hook") == ["applied"], "the applied message")

        bad = h.commit(BAD_NODE, alias_doc("api", ("v1", 100)), settings=settings)
        h.wait(
            "the bad commit refused", lambda: (h.status()["lastError"] or {}).get("revision") == bad
        )
        for _ in range(3):  # the same failure on every interval is told once
            count = h.watch.reconciles
            interval(h)

            def reconciled(c: int = count) -> bool:
                return h.watch.reconciles > c

            h.wait("an interval's reconcile", reconciled)
        good = h.commit(node_doc("v1", "2"), alias_doc("api", ("v1", 100)), settings=settings)
        h.wait("the good commit applied", lambda: h.status()["appliedRevision"] == good)
        wait_until(lambda: len(receiver.events("/hook")) == 3, "three webhook messages")
        wait_until(lambda: len(receiver.events("/slack")) == 2, "two chat messages")
        notifier.close(5)

    assert receiver.events("/hook") == ["applied", "failed", "recovered"]
    failed, recovered = [r.json for r in receiver.bodies("/hook")[1:]]
    assert failed["revision"] == bad and failed["outcome"] == "invalid"
    assert "replicaz" in failed["error"] and "spec.yaml" in failed["error"]
    assert recovered["revision"] == good and recovered["outcome"] == "applied"
    assert recovered["plan"] == "Plan: 1 to add, 0 to change, 1 to destroy."  # replaced
    # The chat target asked for failures and recoveries only: the same two, as Slack text.
    chat = [r.json for r in receiver.bodies("/slack")]
    assert [set(c) for c in chat] == [{"text"}, {"text"}]
    assert chat[0]["text"].startswith(f"gitops-nodes mem: reconcile of {bad[:12]}")
    assert chat[1]["text"].startswith(f"gitops-nodes mem: recovered: {good[:12]}")


def test_each_webhook_body_carries_a_signature_made_with_the_key(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_NOTIFY_KEY", KEY)
    monkeypatch.setenv("TEST_SLACK_URL", receiver.url("/slack"))
    with Harness(tmp_path) as h:
        notifier = with_notifier(h)
        first = h.commit(node_doc("v1"), settings=settings_for(receiver.url("/hook"), ""))
        h.wait("v1 applied", lambda: h.status()["appliedRevision"] == first)
        wait_until(lambda: receiver.events("/hook"), "the applied message")
        notifier.close(5)

    (message,) = receiver.bodies("/hook")
    expected = "sha256=" + hmac.new(KEY.encode(), message.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(message.headers["x-gitops-nodes-signature"], expected)
    wrong = "sha256=" + hmac.new(b"another key", message.body, hashlib.sha256).hexdigest()
    assert message.headers["x-gitops-nodes-signature"] != wrong
    assert message.json["event"] == "applied" and message.json["revision"] == first


def test_a_receiver_that_fails_then_recovers_gets_the_message_after_a_retry() -> None:
    with Receiver(fail_first=2) as flaky:
        target = ResolvedTarget("ops", "webhook", frozenset({"failed"}), flaky.url())
        sender = Sender(target, backoff=0.05, attempts=5)
        sender.submit(Event("failed", "mem", result("invalid", error="bad spec")))
        wait_until(lambda: flaky.received, "the message, after two 500s", within=10)
        sender.close(1)
        assert flaky.attempts == 3
        assert [r.json["error"] for r in flaky.received] == ["bad spec"]
        assert sender.sent == 1


def test_a_reconcile_ending_after_close_starts_no_sender() -> None:
    # watch closes its notifier as it stops; a reconcile still finishing hands it targets.
    notifier = Notifier("mem")
    notifier.close(0)
    before = set(threading.enumerate())
    notifier.use([ResolvedTarget("ops", "webhook", frozenset({"failed"}), "http://127.0.0.1:9/")])
    notifier.observe("reconcile", result("invalid", error="bad spec"), None)
    assert notifier.senders == {}
    assert not [t.name for t in set(threading.enumerate()) - before if t.name.startswith("notify")]


def test_a_dead_receiver_does_not_hold_reconciles_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A receiver that accepts connections and never answers: every POST waits its timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    settings = f"notifications:\n  - {{name: ops, type: webhook, url: '{url}'}}\n"
    try:
        with Harness(tmp_path) as h:
            # Each POST waits 1 s; with the first retry after 30 s, nothing gets through.
            notifier = with_notifier(h, backoff=30, timeout=1)
            for version in "1234":
                revision = h.commit(node_doc("v1", version), settings=settings)

                def applied(r: str = revision) -> bool:
                    return bool(h.status()["appliedRevision"] == r)

                h.wait(f"version {version} applied", applied)
            (sender,) = notifier.senders.values()
            assert sender.sent == 0  # nothing was delivered, and every revision was applied
            notifier.close(0.2)
            sender.thread.join(5)  # its POST timed out, and it stopped rather than retry
            assert not sender.thread.is_alive()
    finally:
        silent.close()


def result(
    outcome: str,
    revision: str = "a" * 40,
    actions: int = 1,
    error: str | None = None,
    plan: str | None = None,
    reason: str = "hook",
) -> ReconcileResult:
    return ReconcileResult(revision, "commit", reason, outcome, 0.0, 0.1, actions, error, plan)


def names(events: list[Event]) -> list[str]:
    return [e.event for e in events]


def test_transitions_tell_a_failure_once_then_its_recovery() -> None:
    t = Transitions("mem")
    a, b, c = "a" * 40, "b" * 40, "c" * 40
    assert names(t.events("reconcile", result("applied", a), None)) == ["applied"]
    assert names(t.events("reconcile", result("failed", b), a)) == ["failed"]
    assert names(t.events("reconcile", result("failed", b), a)) == []
    # Drift healed from the last good revision while b is still bad: healed, not recovered.
    assert names(t.events("heal", result("applied", a), a)) == ["driftHealed"]
    assert names(t.events("heal", result("unchanged", a, actions=0), a)) == []
    assert names(t.events("reconcile", result("invalid", c), a)) == ["failed"]
    recovered = t.events("reconcile", result("applied", c), a)
    assert names(recovered) == ["recovered"] and recovered[0].applied
    assert names(t.events("reconcile", result("unchanged", c, actions=0), c)) == []
    assert names(t.events("reconcile", result("applied", c, reason="drift"), c)) == ["driftHealed"]


def test_transitions_of_a_rollout() -> None:
    t = Transitions("mem")
    a, b = "a" * 40, "b" * 40
    assert names(t.events("reconcile", result("rolling out", b), a)) == ["rolloutStep"]
    assert names(t.events("advance", result("rolling out", b), a)) == ["rolloutStep"]
    rolled = result("rolled back", b, error="alias api: 50.0% of 20 requests failed")
    assert names(t.events("rollback", result("applied", a), a, rolled)) == ["rolledBack"]
    assert names(t.events("heal", result("unchanged", a, actions=0), a)) == []
    assert names(t.events("advance", result("applied", b), a)) == ["recovered"]


def test_a_recovery_reaches_a_target_that_wants_applied_revisions() -> None:
    target = ResolvedTarget("ops", "webhook", frozenset({"applied"}), "http://127.0.0.1:1/")
    assert Event("recovered", "mem", result("applied"), applied=True).wanted_by(target)
    assert not Event("recovered", "mem", result("unchanged"), applied=False).wanted_by(target)
    assert not Event("failed", "mem", result("failed")).wanted_by(target)


def test_a_message_never_carries_its_targets_secrets() -> None:
    url = "https://hooks.example.com/services/T000/B000/XXXXSECRET"
    target = ResolvedTarget("chat", "slack", frozenset({"failed"}), url, b"k3y-value")
    event = Event("failed", "mem", result("failed", error=f"cannot reach {url} with k3y-value"))
    body = body_of(event, target).decode()
    assert "XXXXSECRET" not in body and "k3y-value" not in body
    assert "***" in body
    assert "XXXXSECRET" not in repr(target) and "k3y" not in repr(target)


def test_bad_notification_settings_are_reported_at_their_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_NO_SUCH_URL", raising=False)
    with pytest.raises(SpecErrors) as bad:
        parse_settings(
            b"notifications:\n"
            b"  - name: chat\n"
            b"    type: slack\n"
            b"    url: http://hooks.example.com/secret-path\n"
            b"    events: [applied, aplied]\n"
        )
    assert "gitops-nodes.yaml:5:23: notifications[0].events[1]: expected 'applied'" in str(
        bad.value
    )
    with pytest.raises(SpecErrors) as bad:
        parse_settings(
            b"notifications:\n"
            b"  - name: chat\n"
            b"    type: slack\n"
            b"    url: http://hooks.example.com/secret-path\n"
            b"    hmacKey: {fromEnv: KEY}\n"
        )
    assert "gitops-nodes.yaml:5:14: notifications[0].hmacKey: expected no 'hmacKey'" in str(
        bad.value
    )

    data = (
        "notifications:\n"
        "  - name: ops\n"
        "    type: webhook\n"
        "    urlFrom: {fromEnv: TEST_NO_SUCH_URL}\n"
        "    hmacKey: {fromFile: /nonexistent/key}\n"
    )
    (tmp_path / "gitops-nodes.yaml").write_text(data)
    with pytest.raises(SpecErrors) as unreadable:
        load_notifications(tmp_path, parse_settings(data.encode()))
    text = str(unreadable.value)
    assert (
        "gitops-nodes.yaml:4:24: notifications[0].urlFrom.fromEnv: the environment variable "
        "TEST_NO_SUCH_URL is not set" in text
    )
    assert "gitops-nodes.yaml:5:25: notifications[0].hmacKey.fromFile: cannot read" in text


def test_a_url_written_out_is_not_repeated_in_an_error() -> None:
    with pytest.raises(SpecErrors) as bad:
        parse_settings(
            b"notifications:\n  - {name: chat, type: slack, url: 'ftp://hooks/T0/SECRETPART'}\n"
        )
    assert "notifications[0].url: expected a string matching" in str(bad.value)
    assert "SECRETPART" not in str(bad.value)
