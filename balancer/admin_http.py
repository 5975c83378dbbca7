"""The admin port's HTTP protocol: uvicorn's h11 one, with what a client can make it hold
bounded the way the data port bounds it.

The admin port runs in the data plane's process, so a client that made it hold memory
would take the data plane down with it. uvicorn's default protocol (httptools) gathers a
request line or a header without end (one connection sending 64 MiB of one header grew the
process by 113 MiB), keeps a connection that never finishes a head for ever, and has no
limit on connections. Here:

- a head (its request line and header lines) over the data port's --max-head-size is
  refused (h11's limit on an incomplete event: 400 in the admin port's JSON, then closed);
- a connection waiting for a head (new, or between requests) that has none whole within the
  data port's --header-timeout is closed; uvicorn's own keep-alive timeout (5 s) still closes
  an idle one sooner, but any byte re-arms that one, not this;
- past ADMIN_MAX_CONNECTIONS open connections, requests are answered 503 (uvicorn's
  limit_concurrency); the data port is not affected;
- the warnings uvicorn logs for each such request (and each unsupported upgrade) are logged
  once a minute each, with a count of the ones left out: a client sending garbage in a loop
  would otherwise fill the log (and the disk a log collector writes it to).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

ADMIN_MAX_CONNECTIONS = 1000  # open connections (or running requests) before 503

# What uvicorn logs, at warning, once for each request a client can send as often as it likes.
CLIENT_CAUSED = (
    "Invalid HTTP request received.",
    "Unsupported upgrade request.",
    "No supported WebSocket library detected.",  # the start of the upgrade warning's second
    "Exceeded concurrency limit.",
)
REPEAT_LOGGED_EVERY = 60.0  # seconds between two records of one such warning


class OncePerWindow(logging.Filter):
    """Lets the first record of each client-caused warning through, then none for `every`
    seconds; the next one let through says how many were left out meanwhile."""

    def __init__(self, every: float) -> None:
        super().__init__()
        self.every = every
        self.logged_at: dict[str, float] = {}
        self.left_out: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.msg if isinstance(record.msg, str) else ""
        key = next((known for known in CLIENT_CAUSED if text.startswith(known)), None)
        if key is None:
            return True  # an error of the admin application's own: always logged
        now = time.monotonic()
        last = self.logged_at.get(key)
        if last is not None and now - last < self.every:
            self.left_out[key] = self.left_out.get(key, 0) + 1
            return False
        self.logged_at[key] = now
        if last is not None and (left_out := self.left_out.pop(key, 0)):
            record.msg = f"{text} ({left_out} more like it in the last {now - last:.0f} s)"
        return True


# The admin port's own child of uvicorn's logger (its records reach the process's handlers
# the same way), so that the filter applies to it alone.
ADMIN_ERRORS = logging.getLogger("uvicorn.error.admin")
# The admin server's log_level (balancer/server.py), set on the child too: uvicorn reads
# `logger.level`, not the effective one, before tracing each connection, and a child's is 0.
ADMIN_ERRORS.setLevel(logging.WARNING)
ADMIN_ERRORS.addFilter(OncePerWindow(REPEAT_LOGGED_EVERY))


class AdminProtocol(H11Protocol):
    """H11Protocol that closes a connection which has no whole request head within
    `header_timeout` of waiting for one (class attribute, set by `protocol_for`)."""

    header_timeout = 10.0
    head_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = ADMIN_ERRORS

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._wait_for_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting():
            self._wait_for_head()  # already armed when the head began before: not re-armed
        else:
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._waiting():
            self._wait_for_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A malformed request, or a head past the limit: answered as the admin port's other
        errors are (JSON), then closed (uvicorn's own answer is plain text)."""
        del msg  # uvicorn's one text for every such request
        body = json.dumps(
            {"error": "invalid HTTP request: malformed, or its head is over the size limit"}
        ).encode()
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()

    def _waiting(self) -> bool:
        """Whether no request is in progress: the next head is what the connection waits for."""
        cycle = self.cycle
        return cycle is None or cycle.response_complete

    def _wait_for_head(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.header_timeout, self._late)

    def _stop_waiting(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _late(self) -> None:
        self.head_timer = None
        if self._waiting() and not self.transport.is_closing():
            self.transport.close()


def protocol_for(header_timeout: float) -> type[AdminProtocol]:
    """AdminProtocol with this header timeout (uvicorn makes protocols from a class)."""
    return type("AdminProtocol", (AdminProtocol,), {"header_timeout": header_timeout})
