"""The routing table file, the apply lock, and health: probes and the status names they lead to."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import pytest

from balancer.table import (
    FORMAT,
    AliasEntry,
    Endpoint,
    HealthSettings,
    NodeEntry,
    RoutingTable,
    TableError,
    read_table,
    write_table,
)
from gitops_nodes.errors import LockTimeout
from gitops_nodes.health import Probe, instance_status, node_status, probe, settings_from
from gitops_nodes.live import LiveInstance
from gitops_nodes.spec.models import HealthCheck
from gitops_nodes.statedir import LOCK_FILE, StateDir

ROOT = Path(__file__).resolve().parents[2]

TABLE = RoutingTable(
    generation=4,
    nodes=MappingProxyType(
        {
            "web": NodeEntry(
                (Endpoint("p-web-0", "127.0.0.1", 30000), Endpoint("p-web-1", "127.0.0.1", 30001)),
                2,
                HealthSettings(path="/healthz", port=9000, interval=0.5, start_timeout=30.0),
            ),
            "api": NodeEntry((), 1, HealthSettings()),
        }
    ),
    aliases=MappingProxyType({"front": AliasEntry((("web", 90), ("api", 10)))}),
)


# --- the routing table ---------------------------------------------------------------------


def test_table_round_trips_through_json() -> None:
    data = json.loads(json.dumps(TABLE.to_json()))

    back = RoutingTable.from_json(data)

    assert back == TABLE
    assert back.to_json() == TABLE.to_json()
    assert data["format"] == FORMAT
    assert list(data["nodes"]) == ["api", "web"]  # sorted, whatever the input order
    assert data["aliases"]["front"]["targets"] == [
        {"node": "web", "weight": 90},
        {"node": "api", "weight": 10},
    ]


def test_table_keeps_alias_target_order() -> None:
    back = RoutingTable.from_json(TABLE.to_json())
    assert back.aliases["front"].targets == (("web", 90), ("api", 10))


def test_write_table_replaces_the_file_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "state" / "routing-table.json"
    write_table(path, RoutingTable(generation=1))
    write_table(path, TABLE)

    assert read_table(path) == TABLE
    assert json.loads(path.read_text()) == TABLE.to_json()
    assert sorted(p.name for p in path.parent.iterdir()) == ["routing-table.json"]


def test_write_table_is_a_rename_so_open_readers_keep_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "routing-table.json"
    write_table(path, RoutingTable(generation=1))
    before = path.stat().st_ino

    with path.open() as reader:  # a reader that opened the old table...
        write_table(path, TABLE)
        old = json.loads(reader.read())  # ...still reads it whole

    assert old["generation"] == 1
    assert path.stat().st_ino != before
    assert read_table(path) == TABLE


def test_write_table_failure_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "routing-table.json"
    write_table(path, TABLE)

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("balancer.table.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_table(path, RoutingTable(generation=99))

    assert read_table(path) == TABLE
    assert [p.name for p in tmp_path.iterdir()] == ["routing-table.json"]


def test_read_table_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert read_table(tmp_path / "nothing.json") is None


def _bad_tables() -> dict[str, str]:
    good = json.dumps(TABLE.to_json())
    malformed = TABLE.to_json()
    malformed["nodes"]["web"]["endpoints"][0].pop("port")
    return {
        "empty": "",
        "garbage": "this is not json",
        "partial": good[: len(good) // 2],
        "a list": "[]",
        "wrong format": json.dumps({**TABLE.to_json(), "format": "something/else/v9"}),
        "no format": json.dumps({k: v for k, v in TABLE.to_json().items() if k != "format"}),
        "missing key": json.dumps(malformed),
        "nodes a list": json.dumps({**TABLE.to_json(), "nodes": []}),
        "generation null": json.dumps({**TABLE.to_json(), "generation": None}),
    }


BAD_TABLES = _bad_tables()


@pytest.mark.parametrize("text", BAD_TABLES.values(), ids=BAD_TABLES.keys())
def test_read_table_of_a_bad_file_is_a_table_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "routing-table.json"
    path.write_text(text)

    with pytest.raises(TableError):
        read_table(path)


def test_read_table_of_binary_garbage_is_a_table_error(tmp_path: Path) -> None:
    path = tmp_path / "routing-table.json"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")

    with pytest.raises(TableError):
        read_table(path)


# --- the apply lock ------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from gitops_nodes.statedir import StateDir

    with StateDir(Path(sys.argv[1])).lock(timeout=5):
        print("held", flush=True)
        sys.stdin.readline()
    """
)


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[tuple[StateDir, subprocess.Popen[str]]]:
    """A state directory whose lock another process holds until the test ends."""
    state = StateDir(tmp_path / "state" / "proj")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state.path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield state, holder
    finally:
        if holder.stdin:
            holder.stdin.close()
        holder.wait(timeout=10)


def test_a_second_holder_times_out_naming_the_lock_file(
    held_lock: tuple[StateDir, subprocess.Popen[str]],
) -> None:
    state, holder = held_lock

    with pytest.raises(LockTimeout) as caught, state.lock(timeout=0.2):
        pytest.fail("the lock was acquired while another process holds it")

    message = str(caught.value)
    assert str(state.path / LOCK_FILE) in message
    assert f"pid {holder.pid}" in message


def test_the_lock_is_free_again_once_released(
    held_lock: tuple[StateDir, subprocess.Popen[str]],
) -> None:
    state, holder = held_lock
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(timeout=10)

    with state.lock(timeout=2):
        assert (state.path / LOCK_FILE).read_text() == f"pid {os.getpid()}\n"


def test_the_lock_can_be_taken_again_after_release(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    for _ in range(2):
        with state.lock(timeout=0.1):
            pass
    assert (state.path / LOCK_FILE).read_text() == ""


def test_state_dir_paths(tmp_path: Path) -> None:
    state = StateDir.for_project("proj", base=tmp_path)
    assert state.path == tmp_path / "proj"
    assert state.table == tmp_path / "proj" / "routing-table.json"


# --- statuses ------------------------------------------------------------------------------

HEALTH = HealthSettings(path="/healthz", start_timeout=30.0)
NOW = 1_000_000.0


def _instance(state: str, started_ago: float | None = 5.0) -> LiveInstance:
    started = NOW - started_ago if started_ago is not None else None
    return LiveInstance("p-web-0", "web", 0, "h", None, state, 30000, started)


HEALTHY = Probe(connected=True, healthy=True, detail="ok")
FAILING = Probe(connected=True, healthy=False, detail="503")
REFUSED = Probe(connected=False, healthy=False, detail="refused")


@pytest.mark.parametrize(
    ("state", "found", "started_ago", "status"),
    [
        ("created", None, None, "Created"),
        ("restarting", None, 5.0, "Started"),
        ("running", REFUSED, 5.0, "Started"),  # running, not answering yet
        ("running", FAILING, 5.0, "Preparing"),  # answering, warming up
        ("running", HEALTHY, 5.0, "Healthy"),
        ("running", HEALTHY, 3600.0, "Healthy"),
        ("running", FAILING, 60.0, "Unhealthy"),  # past startTimeout
        ("running", REFUSED, 60.0, "Unhealthy"),
        ("exited", None, None, "Unhealthy"),
        ("dead", None, None, "Unhealthy"),
        ("removing", HEALTHY, 5.0, "Deleting"),
    ],
)
def test_instance_status(
    state: str, found: Probe | None, started_ago: float | None, status: str
) -> None:
    assert instance_status(_instance(state, started_ago), found, NOW, HEALTH) == status


@pytest.mark.parametrize(
    ("statuses", "min_healthy", "status"),
    [
        (["Healthy", "Healthy"], 2, "Healthy"),
        (["Healthy", "Preparing"], 1, "Healthy"),
        (["Healthy", "Unhealthy"], 2, "Unhealthy"),
        (["Created", "Started", "Preparing"], 1, "Created"),
        (["Created"], 1, "Created"),
        (["Preparing", "Unhealthy"], 1, "Unhealthy"),
        (["Deleting", "Deleting"], 1, "Deleting"),
        (["Deleting", "Healthy"], 1, "Healthy"),
        ([], 1, "Unhealthy"),
    ],
)
def test_node_status(statuses: list[str], min_healthy: int, status: str) -> None:
    assert node_status(statuses, min_healthy) == status


def test_settings_from_health_check_keeps_every_field() -> None:
    check = HealthCheck.model_validate(
        {
            "path": "/h",
            "port": 9000,
            "interval": "500ms",
            "timeout": "2s",
            "healthyThreshold": 2,
            "unhealthyThreshold": 4,
            "startTimeout": "1m",
        }
    )
    assert settings_from(check) == HealthSettings("/h", 9000, 0.5, 2.0, 2, 4, 60.0)
    assert settings_from(HealthCheck()) == HealthSettings()


# --- probing a real server on loopback -----------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    CODES: ClassVar[dict[str, int]] = {"/ok": 200, "/moved": 302, "/down": 503, "/missing": 404}

    def do_GET(self) -> None:
        self.send_response(self.CODES.get(self.path, 500))
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server_port(serve_http: Callable[[type[BaseHTTPRequestHandler]], int]) -> int:
    return serve_http(_Handler)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("path", "connected", "healthy"),
    [
        ("/ok", True, True),
        ("/moved", True, True),
        ("/down", True, False),
        ("/missing", True, False),
    ],
)
def test_http_probe(server_port: int, path: str, connected: bool, healthy: bool) -> None:
    found = probe(server_port, HealthSettings(path=path, timeout=2.0))

    assert (found.connected, found.healthy) == (connected, healthy)
    assert path in found.detail


def test_http_probe_of_a_closed_port(closed_port: int) -> None:
    found = probe(closed_port, HealthSettings(path="/ok", timeout=2.0))
    assert (found.connected, found.healthy) == (False, False)


def test_tcp_probe(server_port: int, closed_port: int) -> None:
    assert probe(server_port, HealthSettings(timeout=2.0)) == Probe(
        True, True, "accepts connections"
    )
    refused = probe(closed_port, HealthSettings(timeout=2.0))
    assert (refused.connected, refused.healthy) == (False, False)


def test_an_endpoint_socket_round_trips_and_must_be_an_absolute_path() -> None:
    with_socket = Endpoint("iris-0", "127.0.0.1", 30000, socket="/tmp/gitops-nodes-0/a/b/socket")
    table = RoutingTable(
        1,
        MappingProxyType(
            {
                "iris": NodeEntry(
                    (with_socket, Endpoint("iris-1", "127.0.0.1", 30001)), 1, HealthSettings()
                )
            }
        ),
    )
    data = json.loads(json.dumps(table.to_json()))

    assert RoutingTable.from_json(data) == table
    assert data["nodes"]["iris"]["endpoints"][0]["socket"] == "/tmp/gitops-nodes-0/a/b/socket"
    assert "socket" not in data["nodes"]["iris"]["endpoints"][1]  # tables without stay as were

    data["nodes"]["iris"]["endpoints"][0]["socket"] = "relative/socket"
    with pytest.raises(TableError, match="socket 'relative/socket' is not an absolute path"):
        RoutingTable.from_json(data)
