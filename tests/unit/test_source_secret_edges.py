"""Edges that fuzzing `validate` found: a checkpoint header of the wrong types, a SOPS file
with keys that are not strings, a download that drips or never ends, and a key pasted where
fromEnv names an environment variable. Each is a message naming what to fix, never a
traceback, a hang or an echoed key."""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gitops_nodes.checkpoint import requirement_warnings, version_warnings
from gitops_nodes.sources import remote
from gitops_nodes.sources.cache import Cache
from gitops_nodes.sources.resolve import SourceError
from gitops_nodes.spec.access import environment_variable
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import load_spec
from gitops_nodes.spec.notifications import ResolvedTarget
from gitops_nodes.watch.notify import SendError, post
from tests.files import write_files

PASTED = "sk_live_abcdefghijklmnop1234"  # a key's shape that the model admits as a name
DIGEST = "ab" * 32
SERVER_LIFETIME = 5.0  # seconds: a test server's handler stops by itself after this


def _problems(root: Path, read_keys: bool = True) -> str:
    with pytest.raises(SpecErrors) as caught:
        load_spec(root, read_keys=read_keys, secret_key=lambda: b"k" * 32)
    return str(caught.value)


# --- checkpoint headers ---------------------------------------------------------------

PYTHON_NODE = """\
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: py}
spec:
  python: {code: c.py, checkpoint: s.pkl, inputs: {x: float}, outputs: {y: float}}
"""


def _checkpoint(header: object) -> bytes:
    return pickle.dumps(header) + pickle.dumps({"x": 1.0})


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ({1: "x", "numpy": "1"}, "a package name in it is not a string"),
        ({None: "x"}, "a package name in it is not a string"),
        ({"numpy": 1}, "the version of numpy in it is not a string"),
        ({"numpy": "1\x1b[2J"}, "the version of numpy in it is not a string"),
        (["numpy"], "its packages are not a mapping"),
        ({f"p{i}": "1" for i in range(1001)}, "it lists over 1000 packages"),
    ],
)
def test_a_malformed_checkpoint_header_is_one_warning_not_a_traceback(
    header: object, problem: str
) -> None:
    made = {"gitops-nodes-checkpoint": 1, "python": "3.11.7", "packages": header}

    warnings = version_warnings(made, ("numpy==2.0.0",))

    assert len(warnings) == 1
    assert "a header gitops-nodes cannot read" in warnings[0]
    assert problem in warnings[0]
    assert "\x1b" not in warnings[0]


def test_a_checkpoint_header_whose_python_is_not_a_string_is_a_warning() -> None:
    warnings = version_warnings({"gitops-nodes-checkpoint": 1, "python": 3.11}, ())

    assert warnings and "its python is not a version string" in warnings[0]


def test_a_well_formed_header_and_mlflow_requirements_still_compare() -> None:
    made = {"gitops-nodes-checkpoint": 1, "python": "3.12.1", "packages": {"numpy": "1.26.0"}}

    assert version_warnings(made, ("numpy==2.0.0",)) == [
        "made with Python 3.12.1, the image has Python 3.11",
        "made with numpy 1.26.0, the image gets numpy==2.0.0",
    ]
    assert requirement_warnings(("pandas==2.2.3",), ()) == [
        "logged with pandas 2.2.3, which the node's packages do not list"
    ]


def test_a_node_whose_checkpoint_header_has_an_int_package_name_loads(tmp_path: Path) -> None:
    header = {"gitops-nodes-checkpoint": 1, "packages": {1: "x", "numpy": "1"}}
    root = write_files(
        tmp_path, {"n.yaml": PYTHON_NODE, "c.py": "y = x\n", "s.pkl": _checkpoint(header)}
    )

    desired = load_spec(root, read_keys=False)

    (warning,) = desired.nodes["py"].warnings
    assert warning.startswith("node py: its checkpoint was made with a header gitops-nodes")


# --- SOPS files' keys, without the private keys ---------------------------------------

SECRET_NODE = """\
apiVersion: gitops-nodes/v1
kind: Node
metadata: {name: web}
spec:
  image: {name: "nginx:1.25", port: 80}
  env: {A: {fromSecret: db/password}}
"""


@pytest.mark.parametrize(("written", "shown"), [("1", "1"), ("~", "~"), ("true", "true")])
def test_a_secrets_file_key_that_is_not_a_string_is_named(
    tmp_path: Path, written: str, shown: str
) -> None:
    secrets = f"sops: {{version: 3}}\n{written}: x\nuser: y\n"
    root = write_files(tmp_path, {"n.yaml": SECRET_NODE, "secrets/db.yaml": secrets})

    problems = _problems(root, read_keys=False)

    assert f"secrets/db.yaml: the key {shown} is not a string; write it in quotes" in problems


def test_a_missing_key_lists_at_most_twenty_of_the_files_keys(tmp_path: Path) -> None:
    secrets = "sops: {version: 3}\n" + "".join(f"k{i:02}: x\n" for i in range(25))
    root = write_files(tmp_path, {"n.yaml": SECRET_NODE, "secrets/db.yaml": secrets})

    problems = _problems(root, read_keys=False)

    assert "has no key 'password' (its keys: k00, k01," in problems
    assert "k19 and 5 more)" in problems


# --- downloads: a deadline and a size cap ---------------------------------------------


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], str]]:
    """Serve GET and POST with a function on a free port of 127.0.0.1; its URL returned."""
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(respond: Callable[[BaseHTTPRequestHandler], None]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with contextlib.suppress(OSError):  # the client hung up: this one is done
                    respond(self)

            do_POST = do_GET  # webhooks (watch/notify.py) meet the same servers

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/s.pkl"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _drip_body(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.end_headers()
    end = time.monotonic() + SERVER_LIFETIME
    while time.monotonic() < end:  # a byte at a time, each well within a read's timeout
        handler.wfile.write(b"x")
        handler.wfile.flush()
        time.sleep(0.01)


def _drip_head(handler: BaseHTTPRequestHandler) -> None:
    end = time.monotonic() + SERVER_LIFETIME
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    while time.monotonic() < end:  # a header that never ends
        handler.wfile.write(b"X-A: b\r\n")
        handler.wfile.flush()
        time.sleep(0.01)


def _silent(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "10")
    handler.end_headers()
    handler.wfile.flush()
    # Nothing more; wait for the client to hang up (or the lifetime), polling its socket.
    handler.connection.settimeout(SERVER_LIFETIME)
    handler.connection.recv(1)


def _endless(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.end_headers()
    end = time.monotonic() + SERVER_LIFETIME
    while time.monotonic() < end:
        handler.wfile.write(b"x" * 65536)


@pytest.mark.parametrize("respond", [_drip_body, _drip_head, _silent], ids=lambda f: f.__name__)
def test_a_download_past_its_deadline_fails_naming_the_url(
    serve: Callable[[Callable[[BaseHTTPRequestHandler], None]], str],
    respond: Callable[[BaseHTTPRequestHandler], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remote, "DOWNLOAD_DEADLINE", 0.15)
    url = serve(respond)
    started = time.monotonic()

    with pytest.raises(SourceError) as caught:
        remote.fetch_url(url, DIGEST, Cache(tmp_path))

    # well before one read's own timeout (CONNECT_TIMEOUT, 10 s): the deadline ended it
    assert time.monotonic() - started < 3.0
    assert str(caught.value).startswith(f"{url}: not downloaded within 0.15 s")
    assert not list(tmp_path.rglob("download"))


@pytest.mark.parametrize("respond", [_drip_body, _drip_head], ids=lambda f: f.__name__)
def test_a_webhook_receiver_that_drips_its_answer_is_cut_off_at_the_timeout(
    serve: Callable[[Callable[[BaseHTTPRequestHandler], None]], str],
    respond: Callable[[BaseHTTPRequestHandler], None],
) -> None:
    # Before: the timeout bounded each read only, so a receiver that dripped its answer
    # held its sender thread, and the events queued behind it, for as long as it liked.
    target = ResolvedTarget("ops", "webhook", frozenset(), serve(respond))
    started = time.monotonic()
    with pytest.raises(SendError, match=r"^no whole answer within 0\.3s$"):
        post(target, "applied", b"{}", 0.3)
    assert time.monotonic() - started < 3.0


def test_a_download_over_the_size_cap_fails_naming_the_url(
    serve: Callable[[Callable[[BaseHTTPRequestHandler], None]], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remote, "MAX_DOWNLOAD_BYTES", 2**20)
    url = serve(_endless)

    with pytest.raises(SourceError) as caught:
        remote.fetch_url(url, DIGEST, Cache(tmp_path))

    assert str(caught.value) == f"{url}: larger than 1 MiB, the most a source may be"


def test_a_download_announced_over_the_cap_is_refused_before_its_body(
    serve: Callable[[Callable[[BaseHTTPRequestHandler], None]], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def announce(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(2**40))
        handler.end_headers()

    url = serve(announce)

    with pytest.raises(SourceError) as caught:
        remote.fetch_url(url, DIGEST, Cache(tmp_path))

    assert str(caught.value) == f"{url}: larger than 8 GiB, the most a source may be"


def test_a_download_cut_short_says_so_rather_than_mismatching(
    serve: Callable[[Callable[[BaseHTTPRequestHandler], None]], str], tmp_path: Path
) -> None:
    def short(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        handler.wfile.write(b"x" * 10)
        handler.close_connection = True

    url = serve(short)

    with pytest.raises(SourceError) as caught:
        remote.fetch_url(url, DIGEST, Cache(tmp_path))

    assert str(caught.value) == f"{url}: the connection closed 90 B before the end"


def test_a_download_within_its_limits_is_stored(
    serve: Callable[[Callable[[BaseHTTPRequestHandler], None]], str], tmp_path: Path
) -> None:
    body = b"state" * 1000

    def whole(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    url = serve(whole)

    entry, fetched = remote.fetch_url(url, hashlib.sha256(body).hexdigest(), Cache(tmp_path))

    assert fetched and entry.path.read_bytes() == body


def test_an_s3_object_over_the_cap_is_refused_from_its_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Client:
        class meta:  # boto3's shape: client.meta.endpoint_url
            endpoint_url = "http://127.0.0.1:9"

        def head_object(self, **_: Any) -> dict[str, Any]:
            return {"ETag": '"e"', "ContentLength": 2**40}

        def download_fileobj(self, *_: Any, **__: Any) -> None:
            raise AssertionError("downloaded an object over the cap")

    monkeypatch.setattr(remote, "_s3_client", Client)

    with pytest.raises(SourceError, match=r"^s3://b/k: larger than 8 GiB"):
        remote.fetch_url("s3://b/k", None, Cache(tmp_path))


# --- fromEnv never echoes what may be a pasted key ------------------------------------


@pytest.mark.parametrize(
    "name", ["OPENAI_API_KEY", "DB_PASSWORD", "S3_BUCKET", "DB2_HOST", "SLOT_2", "HOME"]
)
def test_a_conventional_variable_name_is_shown(name: str) -> None:
    assert environment_variable(name) == f"the environment variable {name}"


@pytest.mark.parametrize(
    "name",
    [
        PASTED,
        "AKIAIOSFODNN7EXAMPLE",  # digits between letters
        "JBSWY3DPEHPK3PXP",  # base32
        "ABCDEFGHIJKLMNOPQ",  # one word as long as a key
        "Db_password",
        "_PRIVATE",
        "A__B",
        "A_" * 30,
    ],
)
def test_a_name_that_may_be_a_key_is_not_shown(name: str) -> None:
    shown = environment_variable(name)

    assert name not in shown
    assert f"named in fromEnv ({len(name)} characters; not shown" in shown


def test_a_key_pasted_into_fromenv_is_not_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASTED, raising=False)
    monkeypatch.delenv("CI_API_KEY", raising=False)
    node = f"""\
apiVersion: gitops-nodes/v1
kind: Node
metadata: {{name: web}}
spec:
  image: {{name: "nginx:1.25", port: 80}}
  access:
    keys: [{{name: a, fromEnv: {PASTED}}}, {{name: b, fromEnv: CI_API_KEY}}]
  env: {{A: {{fromEnv: {PASTED}}}}}
"""
    root = write_files(tmp_path, {"n.yaml": node})

    problems = _problems(root)

    assert PASTED not in problems
    assert "spec.access.keys[0].fromEnv: the environment variable named in fromEnv" in problems
    assert "spec.env.A.fromEnv: the environment variable named in fromEnv" in problems
    assert "the environment variable CI_API_KEY is not set" in problems


def test_a_key_pasted_into_a_notifications_fromenv_is_not_echoed() -> None:
    from gitops_nodes.spec.notifications import NotificationTarget, resolve_targets

    target = NotificationTarget.model_validate(
        {"name": "ops", "type": "webhook", "urlFrom": {"fromEnv": PASTED},
         "hmacKey": {"fromEnv": PASTED}}
    )  # fmt: skip
    _, problems = resolve_targets([target], {})
    said = " ".join(message for _, message in problems)
    assert len(problems) == 2 and PASTED not in said
    assert "the environment variable named in fromEnv" in said
