"""The workers of one `serve --workers N`: one admin port that answers for all of them.

Every worker serves the data port (SO_REUSEPORT) and counts its own requests; only worker 0
binds the admin port. Each worker also listens on a Unix socket in a folder private to the
serving user (`worker-<i>.sock`), where a connection gets one JSON snapshot of its counts
and in-flight requests and is closed. Worker 0 reads its peers' snapshots whenever
`/-/metrics` or `/-/status` is asked for and answers with the sum, so Prometheus sees one
series per node and alias whose counters never go down, whichever worker took the traffic.

A peer that does not answer within the deadline is shown with its last snapshot (its counts
cannot have gone down) and marked as not answering, rather than dropped from the sum: a
missing term would look like a counter reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("gitops_nodes.balancer")

# How long worker 0 waits for a peer's snapshot before showing its last one.
PEER_TIMEOUT = 2.0

Snapshot = dict[str, Any]


@dataclass(frozen=True)
class WorkerSet:
    """Which of count workers this process is, and the folder of their snapshot sockets."""

    folder: Path
    count: int
    index: int

    def socket_path(self, index: int) -> Path:
        return self.folder / f"worker-{index}.sock"

    @property
    def answers_admin(self) -> bool:
        """Worker 0 binds the admin port and speaks for the others."""
        return self.index == 0


@dataclass(frozen=True)
class PeerSnapshot:
    """One worker's snapshot as last read, and whether it answered this time."""

    index: int
    snapshot: Snapshot | None
    answered: bool


class SnapshotServer:
    """Serves this worker's snapshot on its Unix socket: one JSON document per connection."""

    def __init__(self, path: Path, make_snapshot: Callable[[], Snapshot]) -> None:
        self.path = path
        self.make_snapshot = make_snapshot
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._answer, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(self.make_snapshot()).encode())
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the reader gave up (its deadline passed): nothing to tell anyone
        finally:
            writer.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Peers:
    """Worker 0's view of all the workers: its own snapshot, and the others' read on demand."""

    def __init__(
        self,
        workers: WorkerSet,
        local: Callable[[], Snapshot],
        timeout: float = PEER_TIMEOUT,
    ) -> None:
        self.workers = workers
        self.local = local  # this worker's snapshot, made in its own loop
        self.timeout = timeout
        self._last: dict[int, Snapshot] = {}

    async def gather(self) -> list[PeerSnapshot]:
        """Every other worker's snapshot, read at once; a silent one's last known."""
        others = [i for i in range(self.workers.count) if i != self.workers.index]
        read = await asyncio.gather(*(self._read(i) for i in others))
        found: list[PeerSnapshot] = []
        for index, snapshot in zip(others, read, strict=True):
            if snapshot is not None:
                self._last[index] = snapshot
            found.append(PeerSnapshot(index, self._last.get(index), snapshot is not None))
        return found

    async def _read(self, index: int) -> Snapshot | None:
        path = self.workers.socket_path(index)
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    data = await reader.read()
                finally:
                    writer.close()
            snapshot = json.loads(data)
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("worker %d did not give its counts (%s): showing its last", index, exc)
            return None
        if not isinstance(snapshot, dict):
            return None
        return snapshot
