"""A deadline for a whole HTTP exchange made with urllib, not only for each read.

urllib's timeout bounds each read of the socket, so a server that sends a byte just inside
it, again and again (its status line, its headers or its body), holds the caller for as long
as it likes. A Watchdog shuts the sockets of the connections made through its opener when
its deadline passes: a read blocked in another thread wakes and fails, and the caller says
why (Watchdog.expired). Used for model downloads (sources/remote.py) and webhook
notifications (watch/notify.py).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import threading
import urllib.request
from types import TracebackType
from typing import Any


class Watchdog:
    """Shuts the sockets of one exchange when its deadline passes, so a read that a server
    keeps alive by dripping bytes ends then (shutdown wakes a blocked read; close may not)."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._timer.cancel()

    def opener(self, *handlers: urllib.request.BaseHandler) -> urllib.request.OpenerDirector:
        """An opener whose HTTP and HTTPS connections this watchdog shuts at its deadline."""
        return urllib.request.build_opener(
            _WatchedHTTPHandler(self), _WatchedHTTPSHandler(self), *handlers
        )

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                _shut(sock)
            else:
                self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown: an SSLSocket's would also drop its TLS state, which a
    # read in another thread is using. A socket closed already has nothing to stop.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, watchdog: Watchdog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watchdog = watchdog

    def connect(self) -> None:
        super().connect()
        self._watchdog.watch(self.sock)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    # Watched once the TLS handshake is done: during it, each read waits CONNECT_TIMEOUT.
    def __init__(self, *args: Any, watchdog: Watchdog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watchdog = watchdog

    def connect(self) -> None:
        super().connect()
        self._watchdog.watch(self.sock)


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> http.client.HTTPResponse:
        watched = functools.partial(_WatchedHTTPConnection, watchdog=self._watchdog)
        return super().do_open(watched, req, **kwargs)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> http.client.HTTPResponse:
        watched = functools.partial(_WatchedHTTPSConnection, watchdog=self._watchdog)
        return super().do_open(watched, req, **kwargs)
