"""The data plane's settings: limits, timeouts, and the proxies whose forwarding headers count.

A value made once at start (from `serve`/`watch`'s options or `python3 -m balancer`'s) and
read by every connection; nothing here changes while the balancer runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from balancer.http import MAX_BODY

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A setting that cannot be used, with what was expected."""


@dataclass(frozen=True)
class ProxySettings:
    """Limits and timeouts of the data plane (seconds, bytes), and whom it trusts."""

    max_body: int = MAX_BODY
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # silence from an instance: before the head, between reads
    idle_timeout: float = 60.0  # kept-alive client connections (instances: each node's own)
    access_log: bool = False
    # Clients whose X-Forwarded-* and Forwarded headers are believed (passed on, appended to);
    # from anyone else they are replaced by what the balancer saw. None by default.
    trusted_proxies: tuple[Network, ...] = ()

    def trusts(self, address: str) -> bool:
        """Whether a client at this address (an IP as text) is one of the trusted proxies."""
        if not self.trusted_proxies:
            return False
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])  # no IPv6 zone
        except ValueError:
            return False  # a Unix socket's peer has no address: never trusted
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
        return any(ip in network for network in self.trusted_proxies)


def parse_trusted_proxies(values: Iterable[str]) -> tuple[Network, ...]:
    """Networks from `--trusted-proxies` values: CIDRs or single addresses, each value one or
    more separated by commas (`10.0.0.0/8,127.0.0.1`). Raises SettingsError naming the bad one.
    """
    networks: list[Network] = []
    for value in values:
        for item in value.split(","):
            text = item.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise SettingsError(
                    f"--trusted-proxies: {text!r} is not an IP address or a CIDR "
                    "(expected e.g. 10.0.0.0/8, 127.0.0.1 or ::1)"
                ) from None
    return tuple(networks)
