"""A Docker engine that takes a call and never answers it (seen at a thousand containers: a
stop waiting for an exit containerd never reported). The engine here is an HTTP server on a
Unix socket in a temp folder, read through the SDK as the Docker runtime reads the real one."""

from __future__ import annotations

import json
import re
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import docker
import pytest

from gitops_nodes.errors import RuntimeFailure
from gitops_nodes.runtime import labels
from gitops_nodes.runtime.docker import DockerRuntime

NAME = "p-web-0-abc123"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _inspect() -> bytes:
    return json.dumps(
        {
            "Name": f"/{NAME}",
            "Config": {"Labels": {labels.PROJECT: "p", labels.NODE: "web", labels.INDEX: "0"}},
            "State": {"Status": "running", "StartedAt": "2026-12-04T01:00:00.0Z"},
            "NetworkSettings": {"Ports": {}},
        }
    ).encode()


@pytest.fixture
def stuck_engine(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    """An engine answering ping and inspect, holding every stop until released."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = re.sub(r"^/v[\d.]+", "", self.path.split("?", 1)[0])
            if path == "/_ping":
                self._answer(200, b"OK")
            elif path == f"/containers/{NAME}/json":
                self._answer(200, _inspect())
            else:
                self._answer(404, b'{"message": "not here"}')

        def do_POST(self) -> None:
            release.wait(30)  # the stop the engine never finishes; then hang up

        def log_message(self, format: str, *args: object) -> None:
            return None

    path = tmp_path / "docker.sock"
    server = _Server(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield path, release
    release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_a_stop_the_engine_never_answers_fails_saying_so_once(
    stuck_engine: tuple[Path, threading.Event],
) -> None:
    path, _ = stuck_engine
    client = docker.DockerClient(base_url=f"unix://{path}", version="1.41", timeout=1)
    runtime = DockerRuntime(client)

    with pytest.raises(RuntimeFailure) as caught:
        runtime.stop_instance("p", NAME, grace=0)

    message = str(caught.value)
    assert message.startswith(f"stopping {NAME} failed: the Docker engine took the call and")
    assert "did not answer in time" in message and "overloaded or stuck" in message
    assert message.count("Read timed out") == 1  # the SDK's words, not repeated
