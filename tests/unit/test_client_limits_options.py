"""The client limits reach the balancer's settings from `serve` and `watch` alike; watch's
--replace-unhealthy-after is read as a duration."""

from __future__ import annotations

import pytest

from balancer.proxy import ProxySettings
from gitops_nodes.cli import (
    _parser,
    _proxy_settings,
    _replace_unhealthy_after,
    _serve_options,
)
from gitops_nodes.errors import GitopsNodesError

LIMITS = [
    "--header-timeout",
    "2.5",
    "--idle-timeout",
    "30",
    "--max-head-size",
    "16384",
    "--max-headers",
    "64",
    "--max-clients",
    "500",
]


@pytest.mark.parametrize("command", [["serve"], ["watch", "file:///repo"]])
def test_limit_options_become_proxy_settings(command: list[str]) -> None:
    settings = _proxy_settings(_parser().parse_args([*command, *LIMITS]))
    assert (
        settings.header_timeout,
        settings.idle_timeout,
        settings.max_head,
        settings.max_headers,
        settings.max_clients,
    ) == (2.5, 30.0, 16384, 64, 500)


@pytest.mark.parametrize("command", [["serve"], ["watch", "file:///repo"]])
def test_without_options_the_defaults_hold(command: list[str]) -> None:
    assert _proxy_settings(_parser().parse_args(command)) == ProxySettings()


def test_status_shows_every_limit_by_name() -> None:
    assert ProxySettings(max_clients=3).limits() == {
        "maxHeadBytes": 32768,
        "maxHeaders": 100,
        "maxBodyBytes": 16 * 2**20,
        "headerTimeoutSeconds": 10.0,
        "idleTimeoutSeconds": 60.0,
        "maxClients": 3,
    }


@pytest.mark.parametrize(
    ("given", "seconds"), [(None, 60.0), ("2s", 2.0), ("5m", 300.0), ("0", 0.0)]
)
def test_watch_replace_unhealthy_after(given: str | None, seconds: float) -> None:
    extra = [] if given is None else ["--replace-unhealthy-after", given]
    args = _parser().parse_args(["watch", "file:///repo", *extra])
    assert _replace_unhealthy_after(args.replace_unhealthy_after) == seconds


@pytest.mark.parametrize("given", ["soon", "-5s", "0.5s", "30d"])
def test_a_bad_replace_unhealthy_after_says_what_is_expected(given: str) -> None:
    with pytest.raises(GitopsNodesError, match="--replace-unhealthy-after: expected a duration"):
        _replace_unhealthy_after(given)


@pytest.mark.parametrize("command", [["serve"], ["watch", "file:///repo"]])
@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--header-timeout", "0", "--header-timeout: expected seconds above 0"),
        ("--idle-timeout", "-5", "--idle-timeout: expected seconds above 0"),
        ("--read-timeout", "nan", "--read-timeout: expected seconds above 0"),
        ("--connect-timeout", "inf", "--connect-timeout: expected seconds above 0"),
        ("--max-head-size", "100", "--max-head-size: expected 1024 or more, got 100"),
        ("--max-headers", "0", "--max-headers: expected 1 or more"),
        ("--max-clients", "-1", "--max-clients: expected 1 or more"),
    ],
)
def test_a_limit_the_data_plane_cannot_use_is_refused_naming_its_option(
    command: list[str], option: str, value: str, words: str
) -> None:
    with pytest.raises(GitopsNodesError, match=words):
        _proxy_settings(_parser().parse_args([*command, option, value]))


@pytest.mark.parametrize("command", [["serve"], ["watch", "file:///repo"]])
@pytest.mark.parametrize(
    ("option", "value"), [("--port", "-1"), ("--port", "65536"), ("--admin-port", "99999")]
)
def test_a_port_out_of_range_is_refused_naming_its_option(
    command: list[str], option: str, value: str
) -> None:
    args = _parser().parse_args([*command, option, value])
    with pytest.raises(GitopsNodesError, match=f"{option}: expected a port from 0 to 65535"):
        _serve_options(args, None)


@pytest.mark.parametrize("option", ["--host", "--admin-host"])
def test_an_empty_address_is_a_usage_error_not_every_address(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", option, ""])
    assert "expected a value, got an empty string" in capsys.readouterr().err
