"""balancer/access.py on its own: reading a request's key, judging it, and the admin port's rule."""

from __future__ import annotations

import argparse
import hashlib
import hmac
from pathlib import Path
from types import MappingProxyType

import pytest

from balancer.access import (
    AccessConfigError,
    AdminGuard,
    Denial,
    Guard,
    admin_guard,
    compile_guards,
    is_loopback,
    presented_key,
)
from balancer.table import (
    AccessKey,
    AccessRule,
    AliasEntry,
    HealthSettings,
    NodeEntry,
    RoutingTable,
)
from gitops_nodes.cli import main

CI = "ci-key-0123456789abcdef"
ANALYST = "analyst-key-fedcba9876543210"
OTHER = "other-key-00000000000000000"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _table() -> RoutingTable:
    """front: ci and analyst, in folder b1g-a; web (a node): other only; open: public."""
    front = AccessRule((AccessKey("ci", _sha(CI)), AccessKey("analyst", _sha(ANALYST))), ("b1g-a",))
    nodes = {
        "web": NodeEntry(
            (), 1, HealthSettings(), access=AccessRule((AccessKey("robot", _sha(OTHER)),))
        ),
        "open": NodeEntry((), 1, HealthSettings()),
    }
    aliases = {
        "front": AliasEntry((("web", 1),), None, front),
        "public": AliasEntry((("open", 1),)),
    }
    return RoutingTable(1, MappingProxyType(nodes), MappingProxyType(aliases))


@pytest.fixture
def front() -> Guard:
    return compile_guards(_table()).aliases["front"]


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ([(b"Authorization", b"Bearer abc")], b"abc"),
        ([(b"authorization", b"bearer   abc  ")], b"abc"),
        ([(b"Authorization", b"Api-Key abc")], b"abc"),
        ([(b"AUTHORIZATION", b"API-KEY abc")], b"abc"),
        ([(b"X-Api-Key", b"abc")], b"abc"),
        ([(b"authorization", b"Bearer def"), (b"x-api-key", b"abc")], b"abc"),  # x-api-key first
        ([(b"x-api-key", b" "), (b"authorization", b"Bearer def")], b"def"),
        ([(b"authorization", b"Basic dXNlcjpwYXNz"), (b"x-api-key", b"abc")], b"abc"),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], None),
        ([(b"authorization", b"Bearer ")], None),
        ([(b"x-api-key", b"")], None),
        ([(b"content-type", b"application/json")], None),
    ],
)
def test_the_key_a_request_presents(headers: list[tuple[bytes, bytes]], key: bytes | None) -> None:
    assert presented_key(headers) == key


def test_only_public_targets_have_no_guard() -> None:
    guards = compile_guards(_table())
    assert set(guards.aliases) == {"front"} and set(guards.nodes) == {"web"}
    empty = RoutingTable(2, MappingProxyType({"open": NodeEntry((), 1, HealthSettings())}))
    assert compile_guards(empty).nodes == {} and compile_guards(empty).aliases == {}


def test_a_listed_key_in_a_listed_folder_is_admitted_by_name(front: Guard) -> None:
    folder = (b"x-folder-id", b"b1g-a")
    assert front.admit([(b"Authorization", b"Bearer " + CI.encode()), folder]) == "ci"
    assert front.admit([(b"x-api-key", ANALYST.encode()), folder]) == "analyst"


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ([], 401, "alias 'front' is private: send its key as Authorization: Bearer <key>"),
        ([(b"x-api-key", b"not-a-key-anywhere-0000")], 401, "not valid for alias 'front'"),
        ([(b"x-api-key", OTHER.encode())], 403, "not one of the keys of alias 'front'"),
        ([(b"x-api-key", CI.encode())], 403, "needs an x-folder-id header"),
        (
            [(b"x-api-key", CI.encode()), (b"x-folder-id", b"b1g-b")],
            403,
            "the folder in x-folder-id may not call alias 'front'",
        ),
    ],
)
def test_denials(front: Guard, headers: list[tuple[bytes, bytes]], status: int, words: str) -> None:
    verdict = front.admit(headers)
    assert isinstance(verdict, Denial)
    assert verdict.status == status and words in verdict.message
    assert CI not in verdict.message and OTHER not in verdict.message


def test_keys_are_compared_in_constant_time_against_every_digest(
    front: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module balancer.access uses
    headers = [(b"x-api-key", CI.encode()), (b"x-folder-id", b"b1g-a")]
    assert front.admit(headers) == "ci"
    presented = hashlib.sha256(CI.encode()).digest()
    # both of front's digests, although the first matched: no early exit
    assert compared == [
        (bytes.fromhex(_sha(CI)), presented),
        (bytes.fromhex(_sha(ANALYST)), presented),
    ]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_admin_port_beyond_loopback_needs_a_key() -> None:
    with pytest.raises(AccessConfigError, match="beyond loopback, without a key: set GITOPS_NODES"):
        admin_guard("0.0.0.0", None)
    assert admin_guard("127.0.0.1", None) is None
    assert isinstance(admin_guard("0.0.0.0", "admin-key-0123456789"), AdminGuard)
    assert isinstance(admin_guard("127.0.0.1", "admin-key-0123456789"), AdminGuard)  # set: enforced
    with pytest.raises(AccessConfigError, match="at least 16 characters") as caught:
        admin_guard("0.0.0.0", "short-admin")
    assert "short-admin" not in str(caught.value)


def test_the_admin_guard() -> None:
    guard = AdminGuard("admin-key-0123456789")
    assert guard.admits([(b"authorization", b"Bearer admin-key-0123456789")])
    assert guard.admits([(b"x-api-key", b"admin-key-0123456789")])
    assert not guard.admits([(b"authorization", b"Bearer admin-key-0123456788")])
    assert not guard.admits([])
    assert "admin-key" not in repr(guard)


# -- the CLI: the admin key comes from the environment or a file --------------------------------


def test_serve_beyond_loopback_without_an_admin_key_stops_before_listening(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("GITOPS_NODES_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("GITOPS_NODES_ADMIN_TOKEN_FILE", raising=False)
    command = ["serve", str(tmp_path), "--state-dir", str(tmp_path), "--admin-host", "0.0.0.0"]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "the admin port would listen on 0.0.0.0, beyond loopback, without a key" in err
    watch = ["watch", str(tmp_path), "--state-dir", str(tmp_path), "--admin-host", "0.0.0.0"]
    assert main(watch) == 1
    assert "beyond loopback, without a key" in capsys.readouterr().err

    monkeypatch.setenv("GITOPS_NODES_ADMIN_TOKEN", "tiny-admin")
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "at least 16 characters" in err and "tiny-admin" not in err

    monkeypatch.delenv("GITOPS_NODES_ADMIN_TOKEN")
    monkeypatch.setenv("GITOPS_NODES_ADMIN_TOKEN_FILE", str(tmp_path / "missing.key"))
    assert main(command) == 1
    assert "cannot read the admin key from" in capsys.readouterr().err

    monkeypatch.setenv("GITOPS_NODES_ADMIN_TOKEN", "admin-key-0123456789")
    assert main(command) == 1
    assert "not both" in capsys.readouterr().err


def test_the_admin_key_file_is_read_and_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gitops_nodes import cli

    key_file = tmp_path / "admin.key"
    key_file.write_text("admin-key-0123456789\n")
    monkeypatch.delenv("GITOPS_NODES_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("GITOPS_NODES_ADMIN_TOKEN_FILE", str(key_file))
    args = argparse.Namespace(admin_host="0.0.0.0")
    assert cli._admin_token(args) == "admin-key-0123456789"
    monkeypatch.delenv("GITOPS_NODES_ADMIN_TOKEN_FILE")
    assert cli._admin_token(argparse.Namespace(admin_host="127.0.0.1")) is None
