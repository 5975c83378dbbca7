"""What `gitops-nodes logs` shows: a node's instances' output, each line prefixed with its
instance (`iris/0 | ...`), merged in time order, or followed as it comes.

Following runs one thread per instance, each reading its instance's stream into one queue
that the caller iterates; closing the Follower closes every stream, which ends the threads.
Nothing here prints: the CLI does. Unless asked for, the lines an instance writes for the
balancers' health checks (one a second or so per balancer) are left out: see HealthLines.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from balancer.table import TableError, read_table
from gitops_nodes.errors import GitopsNodesError
from gitops_nodes.live import LiveInstance
from gitops_nodes.runtime.base import LogLine, LogStream, Runtime
from gitops_nodes.statedir import StateDir

JOIN_TIMEOUT = 0.3  # seconds to wait for all reader threads once their streams are closed
DEFAULT_HEALTH_PATH = "/healthz"  # when the published table does not say (no table yet)
# The balancers' checker (balancer/health.py's USER_AGENT, not imported: it brings asyncio to
# the CLI's start) and apply's own probe (gitops_nodes/health.py) name themselves so.
HEALTH_AGENTS = ("gitops-nodes-balancer", "gitops-nodes-health")


class UnknownNode(GitopsNodesError):
    """The node has no instances and is not in the published routing table either."""


class UnknownInstance(GitopsNodesError):
    """The node has no instance at the index asked for."""


@dataclass(frozen=True)
class Source:
    """One instance whose output is shown, and the prefix its lines get."""

    prefix: str  # node/index, padded so that every source's lines line up
    name: str  # the container


def sources(
    runtime: Runtime, project: str, state: StateDir, node: str, index: int | None = None
) -> list[Source]:
    """The instances of node (only the one at index, if given) in index order. Empty when the
    node is published but has no instance; UnknownNode when the project has no such node."""
    everything = runtime.list_instances(project)
    mine = sorted((i for i in everything if i.node == node), key=lambda i: (i.index, i.name))
    if not mine:
        published = _published_nodes(state)
        if node in published:
            return []
        known = sorted({i.node for i in everything} | published)
        listing = f"its nodes: {', '.join(known)}" if known else "it has no nodes"
        raise UnknownNode(f"project {project} has no node {node!r}; {listing}")
    if index is not None:
        chosen = [i for i in mine if i.index == index]
        if not chosen:
            indexes = ", ".join(str(i) for i in sorted({i.index for i in mine}))
            raise UnknownInstance(f"node {node} has no instance {index}; its instances: {indexes}")
        mine = chosen
    return _prefixed(mine)


def _published_nodes(state: StateDir) -> set[str]:
    try:
        table = read_table(state.table)
    except TableError:
        return set()  # an unreadable table names no node; the containers were asked already
    return set(table.nodes) if table is not None else set()


def _prefixed(instances: Sequence[LiveInstance]) -> list[Source]:
    """node/index per instance; with the container's name too where two share an index (one
    replacing the other)."""
    counts: dict[int, int] = {}
    for instance in instances:
        counts[instance.index] = counts.get(instance.index, 0) + 1
    labels = [
        f"{i.node}/{i.index}" + (f" ({i.name})" if counts[i.index] > 1 else "") for i in instances
    ]
    width = max(len(label) for label in labels)
    return [
        Source(label.ljust(width), instance.name)
        for label, instance in zip(labels, instances, strict=True)
    ]


class HealthLines:
    """Tells an instance's log line about one of the health checks from the balancers (or
    apply's probe) apart from the node's own lines: an access-log line of `GET <the node's
    health path>` in the usual formats (`"GET /healthz HTTP/1.1" 200`, `GET /healthz 200`),
    or any line naming the checkers' user agent."""

    def __init__(self, path: str | None) -> None:
        self.request = (
            re.compile(rf'(?:^|[\s"])GET {re.escape(path)}(?:\?\S*)?(?=[\s"]|$)') if path else None
        )

    @classmethod
    def of(cls, state: StateDir, node: str) -> HealthLines:
        """For node, with the health path the published routing table gives it."""
        try:
            table = read_table(state.table)
        except TableError:
            table = None
        entry = table.nodes.get(node) if table is not None else None
        return cls(entry.health.path if entry is not None else DEFAULT_HEALTH_PATH)

    def __call__(self, text: str) -> bool:
        if any(agent in text for agent in HEALTH_AGENTS):
            return True
        return self.request is not None and self.request.search(text) is not None


def format_line(source: Source, line: LogLine, timestamps: bool) -> str:
    """A line as shown: the instance's prefix, the engine's time if asked for, the text."""
    if timestamps and line.stamp:
        return f"{source.prefix} | {line.stamp} {line.text}"
    return f"{source.prefix} | {line.text}"


def recent(
    runtime: Runtime,
    chosen: Sequence[Source],
    tail: int | None,
    timestamps: bool = False,
    skip: Callable[[str], bool] | None = None,
) -> list[str]:
    """The last tail lines of each source (all when None), merged in time order; lines of
    the same instant keep their instance's order and their own. Lines skip says yes to
    (health checks) are left out."""
    merged: list[tuple[int, int, int, str]] = []
    for order, source in enumerate(chosen):
        stream = runtime.log_stream(source.name, tail, follow=False)
        try:
            for sequence, line in enumerate(stream):
                if skip is not None and skip(line.text):
                    continue
                merged.append((line.at, order, sequence, format_line(source, line, timestamps)))
        finally:
            stream.close()
    merged.sort()
    return [text for _, _, _, text in merged]


_DONE = object()


class Follower:
    """Every source's lines as they come, in one iterator, until all their streams end (the
    instances stopped) or close() is called. Use it as a context manager."""

    def __init__(
        self,
        runtime: Runtime,
        chosen: Sequence[Source],
        tail: int | None,
        timestamps: bool = False,
        skip: Callable[[str], bool] | None = None,
    ) -> None:
        self.timestamps = timestamps
        self.skip = skip
        self.lines: queue.Queue[object] = queue.Queue()
        self.streams: list[LogStream] = []
        self.threads: list[threading.Thread] = []
        try:
            for source in chosen:  # all opened here, so a failure is raised to the caller
                self.streams.append(runtime.log_stream(source.name, tail, follow=True))
        except BaseException:
            self.close()
            raise
        for source, stream in zip(chosen, self.streams, strict=True):
            thread = threading.Thread(
                target=self._read,
                args=(source, stream),
                name=f"logs {source.name}",
                daemon=True,  # never keeps the process alive after Ctrl-C
            )
            self.threads.append(thread)
            thread.start()

    def _read(self, source: Source, stream: LogStream) -> None:
        try:
            for line in stream:
                if self.skip is not None and self.skip(line.text):
                    continue
                self.lines.put(format_line(source, line, self.timestamps))
        except GitopsNodesError as exc:
            self.lines.put(exc)
        finally:
            self.lines.put(_DONE)

    def __iter__(self) -> Iterator[str]:
        running = len(self.threads)
        while running:
            item = self.lines.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, GitopsNodesError):
                raise item
            else:
                assert isinstance(item, str)
                yield item

    def close(self) -> None:
        """Close every stream and wait briefly for the reader threads to end: JOIN_TIMEOUT
        for all of them together, whatever their number, so that Ctrl-C ends `logs --follow`
        within a second (R-stop); a reader still blocked then is a daemon and dies with us."""
        for stream in self.streams:
            stream.close()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Follower:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
