"""A tiny sentiment model served over HTTP with the standard library only.

POST /predict {"text": "..."} -> {"label": "positive"|"negative"|"neutral", "score": float,
"model": version}. GET /healthz answers once the lexicon is loaded.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("MODEL_VERSION", "1")
THRESHOLD = float(os.environ.get("THRESHOLD", "0.0"))
# Every request logged would fill the disk of a server that runs for months: errors only,
# unless ACCESS_LOG=all (and never the balancers' health checks, a few every second).
LOG_ALL = os.environ.get("ACCESS_LOG", "errors") == "all"
LEXICON = {
    "good": 1.0,
    "great": 2.0,
    "excellent": 3.0,
    "love": 2.5,
    "nice": 1.0,
    "fast": 1.0,
    "bad": -1.0,
    "awful": -3.0,
    "terrible": -3.0,
    "hate": -2.5,
    "slow": -1.0,
    "broken": -2.0,
}


def predict(text: str) -> dict[str, object]:
    words = [w.strip(".,!?;:").lower() for w in text.split()]
    hits = [LEXICON[w] for w in words if w in LEXICON]
    score = sum(hits) / len(hits) if hits else 0.0
    label = "positive" if score > THRESHOLD else "negative" if score < -THRESHOLD else "neutral"
    return {"label": label, "score": round(score, 3), "model": VERSION}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"status": "ok", "model": VERSION})
        else:
            self._send(404, {"error": f"no route {self.path}; POST /predict"})

    def do_POST(self) -> None:
        if self.path != "/predict":
            self._send(404, {"error": f"no route {self.path}; POST /predict"})
            return
        length = int(self.headers.get("content-length") or 0)
        try:
            text = json.loads(self.rfile.read(length) or b"{}")["text"]
        except (ValueError, KeyError, TypeError):
            self._send(422, {"error": 'expected a JSON body {"text": "..."}'})
            return
        self._send(200, predict(str(text)))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = code if isinstance(code, int) else 0
        if status >= 400 or (LOG_ALL and self.path != "/healthz"):
            super().log_request(code, size)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
