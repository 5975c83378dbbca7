"""Checks of what the long-running commands write to their log: every line one JSON object
(`--log-format json`) or one plain line (`--log-format text`), the access log's included."""

from __future__ import annotations

import json
import re
from typing import Any

# logging's default asctime, then the level and the logger's name: `time LEVEL logger message`.
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+ .*")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line as its JSON object; AssertionError naming the first line that is not one,
    or that hides another JSON object inside a string."""
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), f"line {number} is not an object: {line!r}"
        assert {"time", "level", "logger", "message"} <= set(record), f"line {number}: {line!r}"
        for key, value in record.items():
            if isinstance(value, str) and value.lstrip().startswith("{"):
                raise AssertionError(f"line {number}: JSON inside the string {key!r}: {line!r}")
        records.append(record)
    return records


def text_lines(text: str) -> list[str]:
    """Every line, each a plain `time LEVEL logger message` line (no JSON object)."""
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        assert TEXT_LINE.fullmatch(line), f"line {number} is not a plain log line: {line!r}"
        assert "{" not in line.split(" ", 4)[-1][:1], f"line {number}: {line!r}"
    return lines


def access_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["logger"].endswith(".access")]
