"""The balancer on its own, as it runs in the Swarm balancer service's image.

    python3 -m balancer --token-file /run/secrets/token [--host 0.0.0.0 --port 8080 ...]

It starts with an empty table and serves what apply pushes to its admin port
(balancer/push.py), finding the nodes' instances by DNS (balancer/discovery.py). This package
alone is in the image: no gitops_nodes, no Docker SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from balancer.logformat import configure as configure_logs
from balancer.proxy import ProxySettings
from balancer.push import push_routes
from balancer.server import Balancer, ServeOptions, new_loop
from balancer.settings import SettingsError, parse_trusted_proxies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m balancer", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--admin-host", default="0.0.0.0")
    parser.add_argument("--admin-port", type=int, default=8081)
    parser.add_argument("--token-file", type=Path, required=True, help="the push token")
    parser.add_argument("--access-log", action="store_true")
    limits = ProxySettings()
    parser.add_argument("--idle-timeout", type=float, default=limits.idle_timeout)
    parser.add_argument("--header-timeout", type=float, default=limits.header_timeout)
    parser.add_argument("--max-head-size", type=int, default=limits.max_head)
    parser.add_argument("--max-headers", type=int, default=limits.max_headers)
    parser.add_argument("--max-clients", type=int, default=limits.max_clients)
    parser.add_argument(
        "--trusted-proxies",
        action="append",
        default=[],
        metavar="CIDRS",
        help="clients whose X-Forwarded-*/Forwarded headers are believed (default: none)",
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "text"],
        default="json",
        help="every log line (the access log's too) a JSON object, or a plain line",
    )
    args = parser.parse_args(argv)
    try:
        trusted = parse_trusted_proxies(args.trusted_proxies)
    except SettingsError as exc:
        parser.error(str(exc))
    configure_logs(structured=args.log_format == "json")
    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        parser.error(f"cannot read the token file {args.token_file}: {exc.strerror}")
    if not token:
        parser.error(f"the token file {args.token_file} is empty")
    try:
        settings = ProxySettings(
            access_log=args.access_log,
            trusted_proxies=trusted,
            idle_timeout=args.idle_timeout,
            header_timeout=args.header_timeout,
            max_head=args.max_head_size,
            max_headers=args.max_headers,
            max_clients=args.max_clients,
        )
        # The admin port listens beyond loopback: the push token guards all of it (the
        # table endpoints, status and metrics alike); /-/healthz stays open for checks.
        options = ServeOptions(
            args.host, args.port, args.admin_host, args.admin_port, admin_token=token
        )
    except SettingsError as exc:
        parser.error(str(exc))
    loop = new_loop()
    asyncio.set_event_loop(loop)
    balancer = Balancer(loop, None, settings, follow_file=False)
    balancer.extra_routes.extend(push_routes(balancer, token))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, balancer.stop)
    try:
        loop.run_until_complete(balancer.serve_until_stopped(options))
    except SettingsError as exc:  # the address or a port cannot be listened on
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
