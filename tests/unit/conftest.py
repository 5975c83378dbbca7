"""Unit fixtures: desired states loaded from YAML documents written to a temporary repo, and
small HTTP servers on 127.0.0.1 for the probes, and a python node served in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitops_nodes.spec.load import load_spec
from gitops_nodes.spec.state import DesiredState
from tests.unit.test_pynode_server import Served, serving, write_counter


@pytest.fixture
def desired(
    write_repo: Callable[[dict[str, str]], Path],
) -> Callable[..., DesiredState]:
    """Write the documents (and any extra files) into a fresh repo and load it."""

    def make(*documents: dict[str, Any], files: dict[str, str] | None = None) -> DesiredState:
        text = yaml.safe_dump_all(documents, sort_keys=False)
        return load_spec(write_repo({"spec.yaml": text, **(files or {})}))

    return make


@pytest.fixture
def serve_http() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], int]]:
    """Serve a handler class on a free port of 127.0.0.1 (its port returned) until the test
    ends; shut down within a poll interval of 0.05 s rather than the default 0.5 s."""
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> int:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        servers.append((server, thread))
        return int(server.server_address[1])

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[Served]:
    """A stateful python node served in a thread: each request adds `step` (an int) to a
    count kept in the namespace."""
    with serving(write_counter(tmp_path)) as served:
        yield served
