"""The data plane's settings: limits, timeouts, and the proxies whose forwarding headers count.

A value made once at start (from `serve`/`watch`'s options or `python3 -m balancer`'s) and
read by every connection; nothing here changes while the balancer runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from balancer.http import MAX_BODY, MAX_CLIENTS, MAX_HEAD, MAX_HEADERS

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_SECONDS = 86_400.0  # a timeout's ceiling: a day
MIN_HEAD = 1024  # bytes of request line and headers below which common requests are refused


class SettingsError(ValueError):
    """A setting that cannot be used, with what was expected."""


@dataclass(frozen=True)
class ProxySettings:
    """Limits and timeouts of the data plane (seconds, bytes), and whom it trusts.

    The client limits bound what one connection can make the balancer hold: a request head
    (request line and header lines) of at most max_head bytes and max_headers lines (431, or
    414 when the request line alone is longer), sent within header_timeout (408); a
    kept-alive connection idle for idle_timeout closes; past max_clients open connections,
    a new one is answered 503 and closed.
    """

    max_body: int = MAX_BODY
    connect_timeout: float = 5.0
    read_timeout: float = 60.0  # silence from an instance: before the head, between reads
    idle_timeout: float = 60.0  # kept-alive client connections (instances: each node's own)
    access_log: bool = False
    # Clients whose X-Forwarded-* and Forwarded headers are believed (passed on, appended to);
    # from anyone else they are replaced by what the balancer saw. None by default.
    trusted_proxies: tuple[Network, ...] = ()
    max_head: int = MAX_HEAD
    max_headers: int = MAX_HEADERS
    header_timeout: float = 10.0  # from a head's first byte to its last (and connect to first)
    max_clients: int = MAX_CLIENTS  # open client connections, per worker process

    def __post_init__(self) -> None:
        # Named by the options that set them (serve, watch and python3 -m balancer alike):
        # a 0, negative, NaN or infinite timeout would close every connection at once or
        # never, and a limit under its floor would refuse every request.
        for option, seconds in (
            ("--connect-timeout", self.connect_timeout),
            ("--read-timeout", self.read_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--header-timeout", self.header_timeout),
        ):
            if not 0 < seconds <= MAX_SECONDS:
                raise SettingsError(
                    f"{option}: expected seconds above 0 and at most {MAX_SECONDS:g} (a day), "
                    f"got {seconds:g}"
                )
        for option, value, least in (
            ("--max-head-size", self.max_head, MIN_HEAD),
            ("--max-headers", self.max_headers, 1),
            ("--max-clients", self.max_clients, 1),
            ("the body limit", self.max_body, 0),
        ):
            if value < least:
                raise SettingsError(f"{option}: expected {least} or more, got {value}")

    def limits(self) -> dict[str, float | int]:
        """The client limits, as `/-/status` shows them."""
        return {
            "maxHeadBytes": self.max_head,
            "maxHeaders": self.max_headers,
            "maxBodyBytes": self.max_body,
            "headerTimeoutSeconds": self.header_timeout,
            "idleTimeoutSeconds": self.idle_timeout,
            "maxClients": self.max_clients,
        }

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
