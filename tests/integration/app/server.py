"""The test service: answers its version, and misbehaves on request through its environment.

VERSION: what GET / answers. HEALTH=fail: /healthz answers 503 forever. CRASH=1: exit at start.
SICK_FILE: /healthz answers 503 while that file exists (`docker exec ... touch` makes it sick).
STATUS: the status code of every answer but /healthz's (200 by default).
GET /slow?ms=N answers after N milliseconds.
Behind a private alias or node it also answers the caller's name the balancer passed on.
LOG=1: print one line per request but /healthz's ("<VERSION> GET <path>"), after a start line.
LOG=all: /healthz's too, as "<VERSION> GET /healthz <status> <user agent>".
TELEMETRY_PORT: also serve Prometheus text on that port at /metrics: requests per path
(`app_requests_total`, label `path`) and `app_info` (label `version`).
"""

import json
import os
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

if os.environ.get("CRASH") == "1":
    print("crashing on purpose: CRASH=1", flush=True)
    sys.exit(3)

VERSION = os.environ.get("VERSION", "?")
LOG = os.environ.get("LOG") in ("1", "all")
LOG_HEALTH = os.environ.get("LOG") == "all"
COUNTS = Counter()
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/healthz":
            sick = os.environ.get("SICK_FILE")
            failing = os.environ.get("HEALTH") == "fail" or bool(sick and os.path.exists(sick))
            status = 503 if failing else 200
            if LOG_HEALTH:
                agent = self.headers.get("user-agent", "-")
                print(f"{VERSION} GET {self.path} {status} {agent}", flush=True)
        else:
            status = int(os.environ.get("STATUS", "200"))
            with LOCK:
                COUNTS[self.path] += 1
            if LOG:
                print(f"{VERSION} GET {self.path}", flush=True)
        target = urlsplit(self.path)
        if target.path == "/slow":
            time.sleep(int(parse_qs(target.query).get("ms", ["1000"])[0]) / 1000)
        payload = {"version": VERSION, "path": self.path}
        caller = self.headers.get("x-gitops-nodes-caller")  # set by the balancer: private
        if caller is not None:
            payload["caller"] = caller
            payload["sawKey"] = "authorization" in self.headers or "x-api-key" in self.headers
        self.send(status, "application/json", json.dumps(payload).encode())

    def send(self, status, content_type, body):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class Telemetry(Handler):
    def do_GET(self):
        if self.path != "/metrics":
            self.send(404, "text/plain", b"not found\n")
            return
        lines = ["# HELP app_requests_total Requests by path.", "# TYPE app_requests_total counter"]
        with LOCK:
            for path, count in sorted(COUNTS.items()):
                escaped = path.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'app_requests_total{{path="{escaped}"}} {count}')
        lines += ["# TYPE app_info gauge", f'app_info{{version="{VERSION}"}} 1']
        self.send(200, "text/plain; version=0.0.4", ("\n".join(lines) + "\n").encode())


if os.environ.get("TELEMETRY_PORT"):
    telemetry = ThreadingHTTPServer(("0.0.0.0", int(os.environ["TELEMETRY_PORT"])), Telemetry)
    threading.Thread(target=telemetry.serve_forever, daemon=True).start()
if LOG:
    print(f"{VERSION} serving on 8080", flush=True)
ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
