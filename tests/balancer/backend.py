"""A small HTTP/1.1 keep-alive backend for the balancer's tests, run as its own process.

    python backend.py --name NAME [--port 0] [--unhealthy] [--health-delay-ms N]

It prints `PORT <n>` on stdout once it listens on 127.0.0.1. Every answer names the backend
(JSON field `name` and header `x-backend`). Behaviours, chosen by path:

    /healthz               200, or 503 when unhealthy (--unhealthy, or toggled)
    POST /-/toggle-health  flips health (`?healthy=1|0` sets it); answers the new state
    /-/stats               how many requests each path received, /big MiB sent, and how
                           many open connections served a path other than /healthz, /-/...
    /slow?ms=N             answers after N milliseconds
    /drip?ms=N&count=K     a chunked response of K chunks, one every N milliseconds
    /endless?part=head|trailer[&mb=N]  a response whose header (or trailer) never ends:
                           N MiB (64) of it, until the reader closes
    /big?mb=N[&chunked=1]  streams N MiB of `big_block(i)` blocks, content-length or chunked
    /chunked               a chunked response of CHUNKS
    /echo                  the request body back, with x-echo-length and x-received-te
    /close                 reads the request, then closes the connection without answering
    /status?code=N         an empty JSON answer with that status code
    /redirect?to=L[&code=N]  a JSON answer with `Location: L` and status N (302)
    /cookie?path=P         200 setting `Set-Cookie: s=1; Path=P; HttpOnly` and `t=2` without Path
    POST /                 acts as a python node: the body must be a JSON object of inputs;
                           answers {"name", "inputs", "headers"}, or, when the inputs hold
                           "answer": {"code", "json" | "text" | "pad", "ms"}, that status with
                           that JSON, that text, or {"pad": "x" * pad}, after ms milliseconds
    /metrics[?chunked=1]   Prometheus text: its request counts by path (`backend_requests_total`,
                           label `path`) and a gauge labelled `instance_id` (a clash); chunked
                           or with a content-length; `?bad=1`: text that is not the format
    ?hop=1 (any path)      adds hop-by-hop headers to the response
    anything else          JSON: name, method, path, query, target, headers, bodyLength
HEAD answers like GET without the body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from urllib.parse import parse_qs

MIB = 2**20
CHUNKS = (b"alpha-", b"beta-", b"gamma-", b"delta")
_BASE = bytes(range(256)) * (MIB // 256)


def big_block(index: int) -> bytes:
    """The index-th MiB of a /big response: distinct per block, so reordering shows."""
    return index.to_bytes(4, "big") + _BASE[4:]


class Backend:
    def __init__(self, name: str, healthy: bool, health_delay: float) -> None:
        self.name = name
        self.healthy = healthy
        self.health_delay = health_delay
        self.counts: Counter[str] = Counter()
        self.sent_mib = 0  # /big blocks handed to the socket (awaiting drain included)
        self.serving: set[asyncio.StreamWriter] = set()  # open, and served a real request

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self.exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.serving.discard(writer)
            writer.close()

    async def exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        lower = {name.lower(): value for name, value in headers}
        body = await read_body(reader, lower)
        keep = version == "HTTP/1.1" and "close" not in lower.get("connection", "").lower()
        path, _, query = target.partition("?")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        self.counts[path] += 1
        if path != "/healthz" and not path.startswith("/-/"):
            self.serving.add(writer)
        head_only = method == "HEAD"
        extra: list[tuple[str, str]] = []
        if params.get("hop") == "1":
            extra += [
                ("Keep-Alive", "timeout=7"),
                ("Proxy-Connection", "keep-alive"),
                ("Upgrade", "h2c"),
                ("Connection", "keep-alive"),
            ]

        if path == "/healthz":
            if self.health_delay:
                await asyncio.sleep(self.health_delay)
            code = 200 if self.healthy else 503
            await self.send_json(writer, code, {"name": self.name, "healthy": self.healthy})
        elif path == "/-/toggle-health":
            if "healthy" in params:
                self.healthy = params["healthy"] == "1"
            else:
                self.healthy = not self.healthy
            await self.send_json(writer, 200, {"name": self.name, "healthy": self.healthy})
        elif path == "/-/stats":
            stats = {
                "name": self.name,
                "counts": dict(self.counts),
                "sentMiB": self.sent_mib,
                "openServing": len(self.serving),
            }
            await self.send_json(writer, 200, stats)
        elif path == "/close":
            return False
        elif path == "/echo":
            out = [
                ("Content-Type", "application/octet-stream"),
                ("x-echo-length", str(len(body))),
                ("x-received-te", lower.get("transfer-encoding", "")),
                ("x-received-length", lower.get("content-length", "")),
            ]
            await self.send(writer, 200, out, body, head_only)
        elif path == "/chunked":
            await self.send_head(writer, 200, [("Transfer-Encoding", "chunked")])
            if not head_only:
                for chunk in CHUNKS:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                    await asyncio.sleep(0.01)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        elif path == "/endless":  # ?part=head: a header, or trailer: a trailer, never ending
            if params.get("part") == "trailer":
                await self.send_head(writer, 200, [("Transfer-Encoding", "chunked")])
                writer.write(b"1\r\nx\r\n0\r\nX-Trailer: ")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
            block = b"e" * 65536
            for _ in range(int(params.get("mb", "64")) * 16):
                writer.write(block)
                await writer.drain()  # ends with an error when the balancer closes
        elif path == "/drip":
            await self.send_head(writer, 200, [("Transfer-Encoding", "chunked")])
            for _ in range(int(params.get("count", "10"))):
                await asyncio.sleep(int(params.get("ms", "100")) / 1000)
                writer.write(b"5\r\ndrip\n\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        elif path == "/big":
            mb = int(params.get("mb", "1"))
            chunked = params.get("chunked") == "1"
            framing = (
                ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(mb * MIB))
            )
            await self.send_head(
                writer, 200, [("Content-Type", "application/octet-stream"), framing]
            )
            if not head_only:
                for index in range(mb):
                    block = big_block(index)
                    if chunked:
                        for start in range(0, MIB, 256 * 1024):
                            part = block[start : start + 256 * 1024]
                            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    else:
                        writer.write(block)
                    self.sent_mib += 1
                    await writer.drain()
                if chunked:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
        elif path == "/" and method == "POST":
            await self.act_as_node(writer, body, headers)
        elif path == "/metrics":
            text = self.metrics_text(bad=params.get("bad") == "1").encode()
            if params.get("chunked") == "1":
                await self.send_head(writer, 200, [("Transfer-Encoding", "chunked")])
                for start in range(0, len(text), 50):
                    part = text[start : start + 50]
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            else:
                content_type = ("Content-Type", "text/plain; version=0.0.4")
                await self.send(writer, 200, [content_type], text, head_only)
        elif path == "/redirect":
            code = int(params.get("code", "302"))
            location = [("Location", params.get("to", "/"))]
            await self.send_json(writer, code, {"name": self.name}, head_only, location)
        elif path == "/cookie":
            cookies = [
                ("Set-Cookie", f"s=1; Path={params.get('path', '/')}; HttpOnly"),
                ("Set-Cookie", "t=2"),
            ]
            await self.send_json(writer, 200, {"name": self.name}, head_only, cookies)
        elif path == "/status":
            await self.send_json(writer, int(params.get("code", "200")), {"name": self.name})
        else:
            if path == "/slow":
                await asyncio.sleep(int(params.get("ms", "1000")) / 1000)
            document = {
                "name": self.name,
                "method": method,
                "path": path,
                "query": query,
                "target": target,
                "headers": headers,
                "bodyLength": len(body),
            }
            await self.send_json(writer, 200, document, head_only, extra)
        return keep

    async def act_as_node(
        self, writer: asyncio.StreamWriter, body: bytes, headers: list[tuple[str, str]]
    ) -> None:
        try:
            inputs = json.loads(body)
        except ValueError:
            inputs = None
        if not isinstance(inputs, dict):
            error = {"error_name": "InvalidInput", "error_message": "not a JSON object"}
            await self.send_json(writer, 422, error)
            return
        answer = inputs.get("answer")
        if not isinstance(answer, dict):
            document = {"name": self.name, "inputs": inputs, "headers": headers}
            await self.send_json(writer, 200, document)
            return
        await asyncio.sleep(answer.get("ms", 0) / 1000)
        code = answer.get("code", 200)
        if "text" in answer:
            text = answer["text"].encode()
            await self.send(writer, code, [("Content-Type", "text/plain")], text)
        elif "pad" in answer:
            await self.send_json(writer, code, {"pad": "x" * answer["pad"]})
        else:
            await self.send_json(writer, code, answer.get("json", {}))

    def metrics_text(self, bad: bool) -> str:
        if bad:
            return "# TYPE backend_requests_total counter\nbackend_requests_total{path=} 1\n"
        lines = [
            "# HELP backend_requests_total Requests by path.",
            "# TYPE backend_requests_total counter",
        ]
        for path, count in sorted(self.counts.items()):
            escaped = path.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'backend_requests_total{{path="{escaped}"}} {count}')
        lines += [
            "# TYPE backend_info gauge",
            f'backend_info{{instance_id="{self.name}",version="1"}} 1',
        ]
        return "\n".join(lines) + "\n"

    async def send_head(
        self, writer: asyncio.StreamWriter, code: int, headers: list[tuple[str, str]]
    ) -> None:
        lines = [f"HTTP/1.1 {code} Whatever\r\nx-backend: {self.name}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        lines.append("\r\n")
        writer.write("".join(lines).encode("latin-1"))
        await writer.drain()

    async def send(
        self,
        writer: asyncio.StreamWriter,
        code: int,
        headers: list[tuple[str, str]],
        body: bytes,
        head_only: bool = False,
    ) -> None:
        headers = [("Content-Length", str(len(body))), *headers]
        await self.send_head(writer, code, headers)
        if not head_only:
            writer.write(body)
            await writer.drain()

    async def send_json(
        self,
        writer: asyncio.StreamWriter,
        code: int,
        document: object,
        head_only: bool = False,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        body = json.dumps(document).encode()
        headers = [("Content-Type", "application/json"), *(extra or [])]
        await self.send(writer, code, headers, body, head_only)


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0") or "0")
    return await reader.readexactly(length) if length else b""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unhealthy", action="store_true")
    parser.add_argument("--health-delay-ms", type=int, default=0)
    args = parser.parse_args()
    backend = Backend(args.name, not args.unhealthy, args.health_delay_ms / 1000)
    server = await asyncio.start_server(
        backend.handle, "127.0.0.1", args.port, backlog=1024, limit=2**20
    )
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
