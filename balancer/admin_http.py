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
  limit_concurrency); the data port is not affected.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

ADMIN_MAX_CONNECTIONS = 1000  # open connections (or running requests) before 503


class AdminProtocol(H11Protocol):
    """H11Protocol that closes a connection which has no whole request head within
    `header_timeout` of waiting for one (class attribute, set by `protocol_for`)."""

    header_timeout = 10.0
    head_timer: asyncio.TimerHandle | None = None

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
