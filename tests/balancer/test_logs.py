"""One pipeline for logs: under `serve --log-format json` every line is one JSON object with
the access log's fields at its top level; under `--log-format text` every line is one plain
line with them as key=value. Checked on the command's real output (workers, reload errors,
shutdown and the access log together)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest

from tests.balancer.conftest import BackendProcess, alias, node
from tests.balancer.served import ServeProcess, fresh_get
from tests.loglines import access_records, json_lines, text_lines
from tests.waiting import wait_until


def exercise(served: ServeProcess, backend: BackendProcess) -> None:
    """Traffic that logs: requests answered 200 and 404, a rejected table, then the stop."""
    served.publish({"a": node(backend)}, {"w": alias(("a", 1))})
    assert fresh_get(served.port, "/aliases/w/x?q=1") == 200
    assert fresh_get(served.port, "/nodes/nope/x") == 404
    temp = served.table_file.with_name(".tmp")
    temp.write_text("{not json")
    os.replace(temp, served.table_file)
    wait_until(lambda: "rejected" in served.log(), "the rejected table to be logged", 10.0)
    assert served.stop() == 0


def test_serve_json_logs_are_one_object_per_line_access_log_included(
    serve: Callable[..., ServeProcess], start_backend: Callable[..., BackendProcess]
) -> None:
    served = serve("--access-log", "--log-format", "json", "--workers", "2")
    exercise(served, start_backend("a1"))

    records = json_lines(served.log())
    access = access_records(records)
    assert len(access) == 2, access
    ok = next(r for r in access if r["status"] == 200)
    assert ok["method"] == "GET" and ok["target"] == "/aliases/w/x?q=1"
    assert (ok["alias"], ok["node"], ok["instance"]) == ("w", "a", "a1")
    assert ok["level"] == "info" and ok["message"] == "GET /aliases/w/x?q=1 200"
    assert isinstance(ok["seconds"], float) and ok["requestId"]
    missing = next(r for r in access if r["status"] == 404)
    assert missing["node"] is None and missing["target"] == "/nodes/nope/x"
    assert any(r["level"] == "error" and "rejected" in r["message"] for r in records)
    assert any(r["message"].startswith("serving ") for r in records)


def test_serve_text_logs_are_plain_lines_access_log_included(
    serve: Callable[..., ServeProcess], start_backend: Callable[..., BackendProcess]
) -> None:
    served = serve("--access-log", "--log-format", "text")
    exercise(served, start_backend("a1"))

    lines = text_lines(served.log())
    access = [line for line in lines if " gitops_nodes.balancer.access " in line]
    assert len(access) == 2, lines
    ok = next(line for line in access if " status=200 " in line)
    assert " INFO gitops_nodes.balancer.access GET /aliases/w/x?q=1 200 " in ok
    for field in ("method=GET", "target=/aliases/w/x?q=1", "alias=w", "node=a", "instance=a1"):
        assert f" {field} " in ok, ok
    assert any(" ERROR " in line and "rejected" in line for line in lines)
    with pytest.raises(ValueError):
        json.loads(ok)
