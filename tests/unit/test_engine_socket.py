"""The engine's socket read without the SDK: which DOCKER_HOST it serves, what it asks, and
the errors a missing, failing or garbled engine gives. The engine here is an HTTP server on a
Unix socket in a temp folder, answering what each test scripts; the real engine's answers are
compared with the SDK's in tests/integration/test_engine_socket.py."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from gitops_nodes.errors import RuntimeFailure, RuntimeUnavailable
from gitops_nodes.runtime import labels
from gitops_nodes.runtime.docker_lazy import LazyDockerRuntime
from gitops_nodes.runtime.engine_socket import DEFAULT_SOCKET, EngineSocket, socket_from_env
from gitops_nodes.spec.context import BUILD_REPOSITORY

# (status, body) for a request's path; the request is recorded as (path, query).
Answer = Callable[[str], tuple[int, bytes]]


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeEngine:
    """An HTTP server on a Unix socket that answers as `answer` says and records requests."""

    def __init__(self, path: Path, answer: Answer) -> None:
        self.path = path
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                engine.requests.append((parts.path, parse_qs(parts.query)))
                status, body = answer(parts.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = _Server(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Callable[[Answer], FakeEngine]]:
    started: list[FakeEngine] = []

    def start(answer: Answer) -> FakeEngine:
        fake = FakeEngine(tmp_path / "docker.sock", answer)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.close()


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


SUMMARY = {
    "Id": "c1",
    "Names": ["/p-api-0-abc"],
    "State": "running",
    "Created": 1700000000,
    "Labels": {labels.PROJECT: "p", labels.NODE: "api", labels.INDEX: "0"},
    "Ports": [{"IP": "127.0.0.1", "PrivatePort": 8080, "PublicPort": 40001, "Type": "tcp"}],
}


def test_only_a_local_socket_without_tls_is_read_without_the_sdk() -> None:
    assert socket_from_env({}) == DEFAULT_SOCKET
    assert socket_from_env({"DOCKER_HOST": ""}) == DEFAULT_SOCKET
    assert socket_from_env({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}) == (
        "/run/user/1000/docker.sock"
    )
    assert socket_from_env({"DOCKER_HOST": "unix://var/run/docker.sock"}) == DEFAULT_SOCKET
    assert socket_from_env({"DOCKER_HOST": "tcp://127.0.0.1:2375"}) is None
    assert socket_from_env({"DOCKER_HOST": "ssh://deploy@host"}) is None
    assert socket_from_env({"DOCKER_TLS_VERIFY": "1"}) is None
    assert socket_from_env({"DOCKER_CERT_PATH": "/certs"}) is None


def test_the_listing_asks_for_every_container_by_the_projects_label(
    engine: Callable[[Answer], FakeEngine],
) -> None:
    fake = engine(lambda path: (200, b"OK") if path == "/_ping" else (200, _json([SUMMARY])))

    runtime = LazyDockerRuntime(EngineSocket(str(fake.path)))
    found = runtime.list_instances("p")

    assert [(i.name, i.node, i.index, i.port, i.state) for i in found] == [
        ("p-api-0-abc", "api", 0, 40001, "running")
    ]
    path, query = fake.requests[-1]
    assert path == "/containers/json"
    assert query["all"] == ["1"]
    assert json.loads(query["filters"][0]) == {"label": [f"{labels.PROJECT}=p"]}


def test_images_are_listed_by_reference_without_dangling_tags(
    engine: Callable[[Answer], FakeEngine],
) -> None:
    images = [
        {"Id": "i1", "RepoTags": ["gitops-nodes/build:aa", "<none>:<none>"]},
        {"Id": "i2", "RepoTags": None},
    ]
    fake = engine(lambda path: (200, b"OK") if path == "/_ping" else (200, _json(images)))

    tags = LazyDockerRuntime(EngineSocket(str(fake.path))).list_images("p")

    assert tags == {"gitops-nodes/build:aa"}
    path, query = fake.requests[-1]
    assert path == "/images/json"
    assert json.loads(query["filters"][0]) == {"reference": [BUILD_REPOSITORY]}


def test_no_engine_at_the_socket_is_unavailable_and_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RuntimeUnavailable) as caught:
        LazyDockerRuntime(EngineSocket(str(tmp_path / "absent.sock")))

    message = str(caught.value)
    assert "absent.sock" in message
    assert "start one" in message and "DOCKER_HOST" in message


def test_an_engine_that_is_not_ready_is_unavailable(
    engine: Callable[[Answer], FakeEngine],
) -> None:
    fake = engine(lambda path: (500, _json({"message": "starting up"})))

    with pytest.raises(RuntimeUnavailable, match="not ready: it answered 500: starting up"):
        EngineSocket(str(fake.path)).ping()


def test_an_engine_error_names_the_read_and_the_engines_message(
    engine: Callable[[Answer], FakeEngine],
) -> None:
    fake = engine(lambda path: (500, _json({"message": "store is locked"})))

    with pytest.raises(RuntimeFailure) as caught:
        EngineSocket(str(fake.path)).containers({"label": ["x=y"]})

    assert str(caught.value) == (
        "listing containers failed: the engine answered 500: store is locked"
    )


def test_an_answer_that_is_not_json_is_a_failure_not_an_empty_listing(
    engine: Callable[[Answer], FakeEngine],
) -> None:
    fake = engine(lambda path: (200, b"<html>a proxy's page</html>"))

    with pytest.raises(RuntimeFailure, match="listing images failed: the engine's answer is not"):
        EngineSocket(str(fake.path)).images("gitops-nodes/build")


def test_an_engine_that_hangs_up_mid_answer_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"

    class HangUp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(65536)
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[{")

    server = _Server(str(path), HangUp)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        with pytest.raises(RuntimeUnavailable, match="listing containers failed: the Docker"):
            EngineSocket(str(path), timeout=5).containers({"label": ["x=y"]})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_engines_name_is_read_once(engine: Callable[[Answer], FakeEngine]) -> None:
    fake = engine(lambda path: (200, b"OK") if path == "/_ping" else (200, _json({"Name": "h1"})))
    runtime = LazyDockerRuntime(EngineSocket(str(fake.path)))

    assert runtime.host_name() == "h1"
    assert runtime.host_name() == "h1"
    assert [path for path, _ in fake.requests] == ["/_ping", "/info"]
