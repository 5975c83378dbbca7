"""A small Language Server Protocol client over stdio: enough JSON-RPC to drive
yaml-language-server the way an editor does (open a file, read its diagnostics, ask for
completion and hover), with a deadline on every wait."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

TOOLS = Path(__file__).resolve().parent
SERVER = TOOLS / "node_modules" / "yaml-language-server" / "bin" / "yaml-language-server"
WAIT_S = 60.0  # generous: the machine is shared and node starts slowly when it is busy


class LspError(Exception):
    """The server answered an error, died, or did not answer in time."""


class LanguageServer:
    """One yaml-language-server process; `settings` is what an editor sends as its `yaml`
    configuration (schemas mapping, validate, completion, ...)."""

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        if not SERVER.is_file():
            raise LspError(
                f"{SERVER} is missing: run scripts/lib/ensure-test-tools.sh, which installs "
                "yaml-language-server with npm"
            )
        # No schema store: its catalog is fetched from the network and maps schemas of its own.
        self.settings = {"schemaStore": {"enable": False}} | settings
        self._process = subprocess.Popen(
            ["node", str(SERVER), "--stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._next_id = 0
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._diagnostics: dict[str, list[dict[str, Any]]] = {}
        self._versions: dict[str, int] = {}
        self._lock = threading.Condition()
        assert self._process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout,))
        self._reader.daemon = True
        self._reader.start()
        self.request(
            "initialize",
            {
                "processId": None,
                "rootUri": root.as_uri(),
                "capabilities": {
                    "workspace": {"configuration": True},
                    "textDocument": {
                        "completion": {"completionItem": {"snippetSupport": True}},
                        "hover": {"contentFormat": ["markdown", "plaintext"]},
                        "publishDiagnostics": {},
                    },
                },
            },
        )
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration", {"settings": {"yaml": self.settings}})
        # The server pulls the settings and applies them asynchronously, and validates what is
        # opened meanwhile without them; its code lens handler answers only once they are
        # applied, so this answer means the settings are in force.
        self.request("textDocument/codeLens", {"textDocument": {"uri": (root / ".ready").as_uri()}})

    # -- the editor's side ------------------------------------------------------------

    def open(self, path: Path, text: str | None = None) -> list[dict[str, Any]]:
        """Opens (or re-sends) a document and returns the diagnostics published for it."""
        uri = path.as_uri()
        text = path.read_text() if text is None else text
        with self._lock:
            self._diagnostics.pop(uri, None)
            version = self._versions.get(uri, 0) + 1
            self._versions[uri] = version
        if version == 1:
            self.notify(
                "textDocument/didOpen",
                {"textDocument": {"uri": uri, "languageId": "yaml", "version": 1, "text": text}},
            )
        else:
            self.notify(
                "textDocument/didChange",
                {
                    "textDocument": {"uri": uri, "version": version},
                    "contentChanges": [{"text": text}],
                },
            )
        deadline = time.monotonic() + WAIT_S
        with self._lock:
            while uri not in self._diagnostics:
                left = deadline - time.monotonic()
                if left <= 0 or self._process.poll() is not None:
                    raise LspError(f"no diagnostics for {path} within {WAIT_S} s")
                self._lock.wait(left)
            return self._diagnostics[uri]

    def completion(self, path: Path, line: int, character: int) -> list[dict[str, Any]]:
        answer = self.request(
            "textDocument/completion",
            {
                "textDocument": {"uri": path.as_uri()},
                "position": {"line": line, "character": character},
            },
        )
        if isinstance(answer, dict):
            return list(answer.get("items", []))
        return list(answer or [])

    def hover(self, path: Path, line: int, character: int) -> str:
        answer = self.request(
            "textDocument/hover",
            {
                "textDocument": {"uri": path.as_uri()},
                "position": {"line": line, "character": character},
            },
        )
        if not answer:
            return ""
        contents = answer["contents"]
        return str(contents["value"] if isinstance(contents, dict) else contents)

    def close(self) -> None:
        try:
            self.request("shutdown", None)
            self.notify("exit", None)
            self._process.wait(timeout=10)
        except (LspError, subprocess.TimeoutExpired, OSError):
            self._process.kill()
            self._process.wait()

    # -- JSON-RPC ---------------------------------------------------------------------

    def request(self, method: str, params: Any) -> Any:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            answers: queue.Queue[dict[str, Any]] = queue.Queue()
            self._answers[ident] = answers
        self._send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        try:
            message = answers.get(timeout=WAIT_S)
        except queue.Empty:
            raise LspError(f"{method}: no answer within {WAIT_S} s") from None
        if "error" in message:
            raise LspError(f"{method}: {message['error']}")
        return message.get("result")

    def notify(self, method: str, params: Any) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        stdin.flush()

    def _read(self, stream: IO[bytes]) -> None:
        while True:
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if not line:
                with self._lock:
                    self._lock.notify_all()
                return
            self._handle(json.loads(stream.read(length)))

    def _handle(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:  # an answer to one of our requests
            with self._lock:
                answers = self._answers.pop(message["id"], None)
            if answers is not None:
                answers.put(message)
        elif "id" in message:  # the server asks us something
            result: Any = None
            if method == "workspace/configuration":
                items = message["params"]["items"]
                result = [
                    self.settings if item.get("section") == "yaml" else None for item in items
                ]
            self._send({"jsonrpc": "2.0", "id": message["id"], "result": result})
        elif method == "textDocument/publishDiagnostics":
            with self._lock:
                self._diagnostics[message["params"]["uri"]] = message["params"]["diagnostics"]
                self._lock.notify_all()
