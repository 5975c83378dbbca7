"""Log set-up for the long-running commands (watch, serve): one JSON object per line, or one
plain line, for every record (the access log's included). The formats themselves are the
balancer's (balancer/logformat.py), so `python3 -m balancer` logs the same way."""

from __future__ import annotations

from balancer.logformat import JsonFormatter, TextFormatter
from balancer.logformat import configure as _configure

__all__ = ["JsonFormatter", "TextFormatter", "configure"]


def configure(structured: bool) -> None:
    """Log INFO and up to stderr, as JSON lines or as plain text lines."""
    _configure(structured)
