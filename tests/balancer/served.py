"""`gitops-nodes serve` as its own process (the command users run, `--workers` and all), for
tests that need what only the command does: forking workers, configuring logs.

`ServeProcess.start(...)` runs it on free loopback ports with its output in a file and waits,
with a deadline, until the admin port answers; `stop()` sends SIGTERM and waits for the exit.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from balancer.table import AliasEntry, NodeEntry, RoutingTable, write_table
from tests.balancer.conftest import HOST, PROJECT, Reply, free_port, request
from tests.waiting import wait_until


@dataclass
class ServeProcess:
    """One `gitops-nodes serve` process (and its workers) over a state folder of its own."""

    state: Path
    output: Path
    args: tuple[str, ...] = ()
    port: int = 0
    admin_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def table_file(self) -> Path:
        return self.state / PROJECT / "routing-table.json"

    def start(self, within: float = 30.0) -> None:
        self.port, self.admin_port = free_port(), free_port()
        command = [sys.executable, "-m", "gitops_nodes", "serve", "--project", PROJECT]
        command += ["--state-dir", str(self.state), "--runtime", "docker"]
        command += ["--port", str(self.port), "--admin-port", str(self.admin_port)]
        command += list(self.args)
        env = {**os.environ, **self.env}
        with self.output.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its workers end with it, even when a test fails
            )
        wait_until(self._answers, "gitops-nodes serve to answer its admin port", within, 0.05)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited with {self.process.returncode}: {self.log()}")
        try:
            return self.admin("/-/healthz").status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, and the exit code; the whole process group is killed if it lingers."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a worker left behind
        return process.returncode

    # -- HTTP ---------------------------------------------------------------------------

    def admin(self, path: str) -> Reply:
        return request(self.admin_port, "GET", path, timeout=10.0)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return request(self.port, "GET", path, headers)

    def status(self) -> dict[str, Any]:
        reply = self.admin("/-/status")
        assert reply.status == 200, reply.body
        document: dict[str, Any] = json.loads(reply.body)
        return document

    def publish(self, nodes: dict[str, NodeEntry], aliases: dict[str, AliasEntry]) -> None:
        """Write the next table and wait until every worker serves it, its instances Healthy."""
        self.generation += 1
        table = RoutingTable(
            generation=self.generation,
            nodes=MappingProxyType(dict(nodes)),
            aliases=MappingProxyType(dict(aliases)),
        )
        write_table(self.table_file, table)

        def served() -> bool:
            document = self.status()
            names = {i["instance"] for n in document["nodes"] for i in n["instances"]}
            workers = document.get("workers")
            if workers is None:  # one process: its own view is the only one
                healthy = {
                    i["instance"]
                    for n in document["nodes"]
                    for i in n["instances"]
                    if i["status"] == "Healthy"
                }
                workers = [{"generation": document["generation"], "healthy": sorted(healthy)}]
            return all(
                w["generation"] == self.generation and set(w["healthy"]) == names for w in workers
            )

        wait_until(served, f"every worker to serve generation {self.generation}", 20.0, 0.05)


def fresh_get(port: int, path: str) -> int:
    """One GET on a new connection (so SO_REUSEPORT spreads them over the workers)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()
