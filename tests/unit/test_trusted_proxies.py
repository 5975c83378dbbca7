"""--trusted-proxies: which clients' forwarding headers the balancer believes."""

from __future__ import annotations

import ipaddress

import pytest

from balancer import __main__ as balancer_main
from balancer.settings import ProxySettings, SettingsError, parse_trusted_proxies
from gitops_nodes import cli


def test_cidrs_and_addresses_comma_separated_and_repeated() -> None:
    networks = parse_trusted_proxies(["10.0.0.0/8, 127.0.0.1", "::1", "192.168.1.7/24"])
    assert networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.0/24"),  # host bits are forgiven
    )
    settings = ProxySettings(trusted_proxies=networks)
    assert settings.trusts("10.200.3.4") and settings.trusts("127.0.0.1")
    assert settings.trusts("::1") and settings.trusts("::ffff:10.0.0.1")  # dual-stack view
    assert settings.trusts("192.168.1.200")
    assert not settings.trusts("127.0.0.2") and not settings.trusts("11.0.0.1")
    assert not settings.trusts("unknown") and not settings.trusts("")  # a Unix socket's peer


def test_nobody_is_trusted_by_default() -> None:
    assert parse_trusted_proxies([]) == ()
    assert not ProxySettings().trusts("127.0.0.1")


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "nope", "10.0.0.1,,x"])
def test_a_bad_value_is_named(bad: str) -> None:
    with pytest.raises(SettingsError, match=r"--trusted-proxies: '.*' is not an IP address"):
        parse_trusted_proxies([bad])


@pytest.mark.parametrize("command", ["serve", "watch"])
def test_serve_and_watch_take_the_option(command: str) -> None:
    repo = ["some/repo"] if command == "watch" else []
    args = cli._parser().parse_args(
        [command, *repo, "--trusted-proxies", "10.0.0.0/8", "--trusted-proxies", "::1"]
    )
    settings = cli._proxy_settings(args)
    assert settings.trusts("10.1.1.1") and settings.trusts("::1")
    assert not settings.trusts("127.0.0.1")


def test_the_standalone_balancer_refuses_a_bad_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        balancer_main.main(["--token-file", "/nonexistent", "--trusted-proxies", "10.0.0.0/99"])
    assert "--trusted-proxies: '10.0.0.0/99'" in capsys.readouterr().err
