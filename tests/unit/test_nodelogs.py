"""`gitops-nodes logs`' pure parts: the engine's timestamped lines, prefixes, the time merge,
and following several streams as one (over an in-memory runtime)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from balancer.health import USER_AGENT as BALANCER_AGENT
from gitops_nodes.live import LiveInstance
from gitops_nodes.nodelogs import (
    HEALTH_AGENTS,
    Follower,
    HealthLines,
    Source,
    UnknownInstance,
    UnknownNode,
    recent,
    sources,
)
from gitops_nodes.runtime.base import LogLine
from gitops_nodes.runtime.base import Runtime as EngineRuntime
from gitops_nodes.runtime.docker import log_line
from gitops_nodes.statedir import StateDir


def test_engine_lines_sort_by_time_whatever_the_fraction_length() -> None:
    early = log_line(b"2024-05-01T12:00:00.1Z first")
    later = log_line(b"2024-05-01T12:00:00.12Z second\r")
    whole = log_line(b"2024-05-01T12:00:01Z third has  spaces")

    assert early.at < later.at < whole.at
    assert whole.at == 1714564801 * 1_000_000_000
    assert (later.stamp, later.text) == ("2024-05-01T12:00:00.12Z", "second")
    assert whole.text == "third has  spaces"
    assert log_line(b"no stamp here") == LogLine(0, "", "no stamp here")
    assert log_line("2024-05-01T12:00:00Z caf\u00e9 \xff".encode("latin-1")).text.startswith("caf")


class Stream:
    def __init__(self, lines: list[LogLine], gate: threading.Event | None = None) -> None:
        self.lines = lines
        self.gate = gate  # when set: blocks after its lines until closed, like a follow
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[LogLine]:
        yield from self.lines
        if self.gate is not None:
            self.closed.wait(10)

    def close(self) -> None:
        self.closed.set()


class Runtime:
    """In memory: instances and their lines; only what nodelogs calls."""

    def __init__(self, instances: list[LiveInstance], logs: dict[str, list[LogLine]]) -> None:
        self.instances = instances
        self.logs = logs
        self.streams: list[Stream] = []
        self.follow_gate = threading.Event()

    def list_instances(self, project: str) -> list[LiveInstance]:
        return self.instances

    def log_stream(self, name: str, tail: int | None, follow: bool) -> Stream:
        lines = self.logs[name]
        lines = lines[len(lines) - tail :] if tail is not None else lines
        stream = Stream(lines, self.follow_gate if follow else None)
        self.streams.append(stream)
        return stream


def engine(runtime: Runtime) -> EngineRuntime:
    """The stand-in as the runtime nodelogs takes: it has only what nodelogs calls."""
    return cast(EngineRuntime, runtime)


def instance(node: str, index: int, name: str) -> LiveInstance:
    return LiveInstance(name, node, index, "h", None, "running", 1000 + index)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir.for_project("p", tmp_path)


def test_prefixes_line_up_and_name_the_container_where_indexes_repeat(state: StateDir) -> None:
    runtime = Runtime(
        [
            instance("web", 10, "p-web-10-a"),
            instance("web", 1, "p-web-1-new"),
            instance("web", 1, "p-web-1-old"),
            instance("api", 0, "p-api-0"),
        ],
        {},
    )

    found = sources(engine(runtime), "p", state, "web")

    assert found == [
        Source("web/1 (p-web-1-new)", "p-web-1-new"),
        Source("web/1 (p-web-1-old)", "p-web-1-old"),
        Source("web/10             ", "p-web-10-a"),
    ]
    assert sources(engine(runtime), "p", state, "web", 10) == [Source("web/10", "p-web-10-a")]
    with pytest.raises(UnknownInstance, match="node web has no instance 2; its instances: 1, 10"):
        sources(engine(runtime), "p", state, "web", 2)
    with pytest.raises(UnknownNode, match="project p has no node 'db'; its nodes: api, web"):
        sources(engine(runtime), "p", state, "db")


def test_recent_merges_by_time_and_keeps_order_within_an_instant() -> None:
    runtime = Runtime(
        [],
        {
            "a": [LogLine(1, "s1", "a1"), LogLine(5, "s5", "a5"), LogLine(5, "s5", "a5bis")],
            "b": [LogLine(3, "s3", "b3"), LogLine(5, "s5", "b5"), LogLine(9, "s9", "b9")],
        },
    )
    chosen = [Source("x/0", "a"), Source("x/1", "b")]

    assert recent(engine(runtime), chosen, None) == [
        "x/0 | a1",
        "x/1 | b3",
        "x/0 | a5",
        "x/0 | a5bis",
        "x/1 | b5",
        "x/1 | b9",
    ]
    assert recent(engine(runtime), chosen, 1, timestamps=True) == [
        "x/0 | s5 a5bis",
        "x/1 | s9 b9",
    ]
    assert all(stream.closed.is_set() for stream in runtime.streams)


def test_following_merges_streams_and_close_ends_them() -> None:
    runtime = Runtime([], {"a": [LogLine(1, "", "a1")], "b": [LogLine(2, "", "b1")]})
    chosen = [Source("x/0", "a"), Source("x/1", "b")]

    with Follower(engine(runtime), chosen, None) as follower:
        lines = iter(follower)
        got = {next(lines), next(lines)}
    assert got == {"x/0 | a1", "x/1 | b1"}
    assert all(stream.closed.is_set() for stream in runtime.streams)
    assert not any(thread.is_alive() for thread in follower.threads)

    runtime.follow_gate = threading.Event()
    done = Follower(engine(runtime), chosen, None)
    done.close()  # closed before reading: the iteration still ends, with what was there
    assert sorted(done) == ["x/0 | a1", "x/1 | b1"]


HEALTH_LINES = [
    '172.17.0.1 - - [03/Dec/2026 01:02:03] "GET /healthz HTTP/1.1" 200 -',
    "GET /healthz 200 41us",
    '10.0.0.2 - - [03/Dec/2026:01:02:03 +0000] "GET /healthz?probe=1 HTTP/1.1" 200 2 "-" '
    '"gitops-nodes-balancer"',
    "request from gitops-nodes-balancer to /ready",
]
OWN_LINES = [
    '172.17.0.1 - - [03/Dec/2026 01:02:03] "POST /predict HTTP/1.1" 200 -',
    '172.17.0.1 - - [03/Dec/2026 01:02:03] "GET /healthzz HTTP/1.1" 200 -',
    "loaded model from /healthz-cache",
    "GET /predict 500 1200us",
]


def test_health_check_lines_are_told_apart_from_the_nodes_own() -> None:
    is_health = HealthLines("/healthz")
    assert [line for line in HEALTH_LINES if not is_health(line)] == []
    assert [line for line in OWN_LINES if is_health(line)] == []
    assert HEALTH_AGENTS[0] == BALANCER_AGENT  # kept in step with the checker's own name


def test_logs_leave_health_checks_out_unless_asked() -> None:
    lines = [LogLine(i, "", text) for i, text in enumerate([*HEALTH_LINES, *OWN_LINES])]
    runtime = Runtime([instance("iris", 0, "c0")], {"c0": lines})
    chosen = sources(engine(runtime), "p", StateDir(Path("/nonexistent/p")), "iris")

    shown = recent(engine(runtime), chosen, None, skip=HealthLines("/healthz"))
    everything = recent(engine(runtime), chosen, None)

    assert shown == [f"iris/0 | {text}" for text in OWN_LINES]
    assert len(everything) == len(HEALTH_LINES) + len(OWN_LINES)
    with Follower(engine(runtime), chosen, None, skip=HealthLines("/healthz")) as follower:
        followed = iter(follower)
        assert [next(followed) for _ in OWN_LINES] == shown
