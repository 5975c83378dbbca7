"""Log records as exactly one line: JSON objects with fields on top, or plain key=value text."""

from __future__ import annotations

import json
import logging
import sys

from balancer.logformat import JsonFormatter, TextFormatter
from tests.loglines import TEXT_LINE


def record(
    message: str, fields: dict[str, object] | None = None, error: bool = False
) -> logging.LogRecord:
    exc_info = None
    if error:
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord(
        "gitops_nodes.balancer.access", logging.INFO, __file__, 1, message, (), exc_info
    )
    if fields is not None:
        made.fields = fields
    return made


ACCESS = {"method": "GET", "target": '/a b?x="1"', "status": 200, "node": None, "message": "no"}


def test_json_puts_fields_beside_the_records_own_keys_on_one_line() -> None:
    line = JsonFormatter().format(record("GET /x 200", ACCESS))
    assert "\n" not in line
    data = json.loads(line)
    assert data["status"] == 200 and data["target"] == '/a b?x="1"' and data["node"] is None
    assert data["message"] == "GET /x 200"  # a field cannot hide the record's own keys
    assert data["logger"] == "gitops_nodes.balancer.access" and data["level"] == "info"


def test_json_folds_multi_line_messages_and_tracebacks_into_one_line() -> None:
    line = JsonFormatter().format(record("two\nlines", error=True))
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "two\nlines"
    assert "ValueError: bad" in data["exception"]


def test_text_appends_fields_as_key_value_on_one_line() -> None:
    line = TextFormatter().format(record("GET /x 200", ACCESS))
    assert TEXT_LINE.fullmatch(line), line
    assert line.endswith(
        ' GET /x 200 method=GET target="/a b?x=\\"1\\"" status=200 node=- message=no'
    ), line


def test_text_folds_multi_line_messages_and_tracebacks_into_one_line() -> None:
    line = TextFormatter().format(record("two\nlines", {"k": "v"}, error=True))
    assert "\n" not in line and TEXT_LINE.fullmatch(line), line
    assert " two\\nlines k=v\\nTraceback" in line
