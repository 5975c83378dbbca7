"""prefixRewrite: the pure rewrite of a response head, the table field, and plan's view of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from balancer import prefix
from balancer.prefix import cookie, location, under_prefix
from balancer.table import RoutingTable, TableError
from gitops_nodes.diff import Action
from gitops_nodes.live import LiveState
from gitops_nodes.plan import make_plan
from gitops_nodes.spec.state import DesiredState
from tests.unit.test_diff_plan import (
    PROJECT,
    alias_doc,
    ids,
    instances_of,
    node_change,
    node_doc,
    table_for,
    with_aliases,
    with_nodes,
)

P = b"/nodes/web"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"/next", b"/nodes/web/next"),
        (b"/", b"/nodes/web/"),
        (b"/a?b=/c#d", b"/nodes/web/a?b=/c#d"),
        (b"http://h:8080/next", b"http://h:8080/nodes/web/next"),
        (b"HTTPS://H:8080", b"HTTPS://H:8080/nodes/web/"),
        (b"//h:8080/x", b"//h:8080/nodes/web/x"),
        (b"http://other/next", b"http://other/next"),  # another host
        (b"next", b"next"),  # relative: resolves under the prefix already
        (b"../x", b"../x"),
        (b"/nodes/web", b"/nodes/web"),  # already under it
        (b"/nodes/web/x", b"/nodes/web/x"),
        (b"/nodes/web?x", b"/nodes/web?x"),
        (b"/nodes/webby", b"/nodes/web/nodes/webby"),  # a longer name is not under it
    ],
)
def test_locations(value: bytes, expected: bytes) -> None:
    assert location(value, P, b"h:8080") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"s=1; Path=/", b"s=1; Path=/nodes/web"),
        (b"s=1; path=/app; HttpOnly", b"s=1; path=/nodes/web/app; HttpOnly"),
        (b"s=1;PATH = /app", b"s=1;PATH = /nodes/web/app"),
        (b"s=1; HttpOnly", b"s=1; HttpOnly"),  # the default path is under the prefix already
        (b"s=1; Path=/nodes/web/x", b"s=1; Path=/nodes/web/x"),
        (b"s=1; Path=relative", b"s=1; Path=relative"),  # not a path: ignored by clients
        (b"path=/; Path=/", b"path=/; Path=/nodes/web"),  # a cookie named path
    ],
)
def test_cookie_paths(value: bytes, expected: bytes) -> None:
    assert cookie(value, P) == expected


def test_a_head_is_rewritten_once_and_only_its_location_and_cookies() -> None:
    block = (
        b"HTTP/1.1 302 Found\r\nX-Location: /x\r\nLocation: /next\r\n"
        b"Content-Location: /doc\r\nSet-Cookie: a=1; Path=/\r\nset-cookie: b=2\r\n"
        b"Content-Length: 0"
    )
    first = under_prefix(block, P, b"h")
    assert first == (
        b"HTTP/1.1 302 Found\r\nX-Location: /x\r\nLocation: /nodes/web/next\r\n"
        b"Content-Location: /nodes/web/doc\r\nSet-Cookie: a=1; Path=/nodes/web\r\n"
        b"set-cookie: b=2\r\nContent-Length: 0"
    )
    assert under_prefix(bytes(block), P, b"h") is first  # remembered: not reworked
    plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2"
    assert under_prefix(plain, P, b"h") is plain
    for n in range(prefix._HEADS_LIMIT + 10):  # bounded
        under_prefix(plain + b"\r\nX-N: %d" % n, P, b"h")
    assert len(prefix._HEADS) <= prefix._HEADS_LIMIT


def test_the_table_carries_the_flag_only_when_set() -> None:
    data: dict[str, Any] = {
        "format": "gitops-nodes/routing-table/v1",
        "generation": 1,
        "nodes": {
            "web": {
                "endpoints": [],
                "minHealthy": 1,
                "health": {},
                "prefixRewrite": True,
            },
            "api": {"endpoints": [], "minHealthy": 1, "health": {}},
        },
        "aliases": {"front": {"targets": [{"node": "web", "weight": 1}], "prefixRewrite": True}},
    }
    table = RoutingTable.from_json(data)
    assert table.nodes["web"].prefix_rewrite and not table.nodes["api"].prefix_rewrite
    assert table.aliases["front"].prefix_rewrite
    written = table.to_json()
    assert written["nodes"]["web"]["prefixRewrite"] is True
    assert "prefixRewrite" not in written["nodes"]["api"]  # tables without it read as before
    assert RoutingTable.from_json(written) == table
    data["nodes"]["web"]["prefixRewrite"] = "yes"
    with pytest.raises(TableError, match="expected true or false"):
        RoutingTable.from_json(data)


def with_rewrite(document: dict[str, object]) -> dict[str, object]:
    spec = dict(document["spec"])  # type: ignore[call-overload]
    spec["prefixRewrite"] = True
    return {**document, "spec": spec}


def test_plan_republishes_a_changed_flag_without_touching_containers(
    desired: Callable[..., DesiredState],
) -> None:
    before = desired(node_doc("web"), alias_doc("front", ("web", 100)))
    have = instances_of(before.nodes["web"])
    table = table_for(before, have)
    live = LiveState(PROJECT, have, table=table)
    assert ids(make_plan(PROJECT, before, live)) == []

    after = desired(with_rewrite(node_doc("web")), with_rewrite(alias_doc("front", ("web", 100))))
    assert after.nodes["web"].prefix_rewrite and after.aliases["front"].prefix_rewrite
    assert after.nodes["web"].spec_hash == before.nodes["web"].spec_hash  # no new containers
    plan = make_plan(PROJECT, after, live)
    change = node_change(plan, "web")
    assert change.action is Action.UPDATE and change.instances == ()
    assert [(f.field, f.before, f.after) for f in change.fields] == [("prefixRewrite", None, True)]
    assert not change.fields[0].forces_replacement
    [alias] = plan.diff.aliases
    assert alias.action is Action.UPDATE
    assert [(f.field, f.before, f.after) for f in alias.fields] == [("prefixRewrite", False, True)]
    assert sorted(ids(plan)) == ["publish alias front", "publish node web"]

    published = with_aliases(
        with_nodes(table, web=replace(table.nodes["web"], prefix_rewrite=True)),
        front=replace(table.aliases["front"], prefix_rewrite=True),
    )
    assert ids(make_plan(PROJECT, after, LiveState(PROJECT, have, table=published))) == []
