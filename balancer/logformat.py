"""Log records as one line each: a JSON object, or plain text with `key=value` fields.

A record may carry structured fields in its extra (`extra={"fields": {...}}`, as the access
log does): the JSON form puts them beside time, level, logger and message, the text form
appends them to the message. Either way a record is exactly one line, whatever its message
or fields hold, so one log pipeline serves `serve`, `watch` and `python3 -m balancer`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """time, level, logger and message, plus the `fields` a record carries in its extra."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            data.setdefault(key, value)  # a field never hides the record's own keys
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        # json.dumps escapes newlines: one object, one line.
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message key=value ...` on one line: fields appended, values with
    spaces, quotes or newlines quoted as JSON strings, a traceback folded into the line."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{key}={_plain(value)}" for key, value in fields.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text.replace("\r", "\\r").replace("\n", "\\n")


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or any(c in text for c in ' "\n\r\t\\'):
        return json.dumps(text)
    return text


def handler(structured: bool) -> logging.Handler:
    """A stderr handler writing JSON lines (structured) or plain lines."""
    stream = logging.StreamHandler()
    stream.setFormatter(JsonFormatter() if structured else TextFormatter())
    return stream


def configure(structured: bool, level: int = logging.INFO) -> None:
    """Send every logger's records (uvicorn's too) to one stderr handler at level and up."""
    root = logging.getLogger()
    root.handlers[:] = [handler(structured)]
    root.setLevel(level)
    # Loggers that kept handlers of their own (uvicorn's default set-up) would write lines
    # in another format: route them through the root's handler instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
