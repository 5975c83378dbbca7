"""The test service: answers its version, and misbehaves on request through its environment.

VERSION: what GET / answers. HEALTH=fail: /healthz answers 503 forever. CRASH=1: exit at start.
STATUS: the status code of every answer but /healthz's (200 by default).
GET /slow?ms=N answers after N milliseconds.
Behind a private alias or node it also answers the caller's name the balancer passed on.
"""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

if os.environ.get("CRASH") == "1":
    print("crashing on purpose: CRASH=1", flush=True)
    sys.exit(3)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/healthz":
            status = 503 if os.environ.get("HEALTH") == "fail" else 200
        else:
            status = int(os.environ.get("STATUS", "200"))
        target = urlsplit(self.path)
        if target.path == "/slow":
            time.sleep(int(parse_qs(target.query).get("ms", ["1000"])[0]) / 1000)
        payload = {"version": os.environ.get("VERSION", "?"), "path": self.path}
        caller = self.headers.get("x-gitops-nodes-caller")  # set by the balancer: private
        if caller is not None:
            payload["caller"] = caller
            payload["sawKey"] = "authorization" in self.headers or "x-api-key" in self.headers
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
