"""Access control over real loopback HTTP: private aliases and nodes, folders, the admin port.

The table carries SHA-256 digests of the keys (as apply writes it); requests present the keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from balancer.access import CHALLENGE, AccessConfigError
from balancer.proxy import ProxySettings
from balancer.server import Balancer, ServeOptions, new_loop
from balancer.table import AccessKey, AccessRule
from tests.balancer.conftest import (
    HOST,
    BackendProcess,
    BalancerHarness,
    Reply,
    alias,
    free_port,
    node,
    request,
)
from tests.waiting import wait_until

CI = "ci-key-0123456789abcdef"
ANALYST = "analyst-key-fedcba9876543210"
ROBOT = "robot-key-00112233445566778899"
ADMIN = "admin-key-0123456789abcdef"
KEYS = (CI, ANALYST, ROBOT, ADMIN)


def rule(*names_and_keys: tuple[str, str], folders: tuple[str, ...] = ()) -> AccessRule:
    keys = tuple(AccessKey(n, hashlib.sha256(k.encode()).hexdigest()) for n, k in names_and_keys)
    return AccessRule(keys, folders)


FRONT = rule(("ci", CI), ("analyst", ANALYST))  # the private alias
ROBOT_ONLY = rule(("robot", ROBOT))  # the private node


@pytest.fixture
def private(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> BalancerHarness:
    """front (private, ci and analyst) -> web (public); hidden (private node, robot only);
    open (public alias) -> web."""
    web, hidden = start_backend("web1"), start_backend("hidden1")
    balancer.publish(
        {"web": node(web), "hidden": node(hidden, access=ROBOT_ONLY)},
        {"front": alias(("web", 1), access=FRONT), "open": alias(("web", 1))},
    )
    balancer.wait_status({"web1": "Healthy", "hidden1": "Healthy"})
    return balancer


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_no_key_is_401_with_a_challenge(private: BalancerHarness) -> None:
    for path, headers in [
        ("/aliases/front/x", {}),
        ("/x", {"x-node-alias": "front"}),
        ("/x", {"x-node-alias": "datasphere.user.front"}),
        ("/aliases/front/x", {"Authorization": "Basic dXNlcjpwYXNz"}),
    ]:
        reply = private.get(path, headers)
        assert reply.status == 401, (path, headers, reply.body)
        assert reply.header("www-authenticate") == CHALLENGE
        body = reply.json()
        assert body["alias"] == "front" and body["status"] == 401
        assert "alias 'front' is private" in body["error"]
        assert body["requestId"] == reply.header("x-request-id")


def test_an_unknown_key_is_401(private: BalancerHarness) -> None:
    reply = private.get("/aliases/front/x", bearer("no-such-key-0123456789"))
    assert reply.status == 401 and reply.header("www-authenticate") == CHALLENGE
    assert "not valid for alias 'front'" in reply.json()["error"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {CI}"},
        {"Authorization": f"Api-Key {CI}"},
        {"authorization": f"api-key {CI}"},
        {"x-api-key": CI},
    ],
    ids=["bearer", "api-key", "api-key-lowercase", "x-api-key"],
)
def test_each_form_of_a_listed_key_is_admitted(
    private: BalancerHarness, headers: dict[str, str]
) -> None:
    reply = private.get("/aliases/front/x", headers)
    assert reply.status == 200, reply.body
    assert reply.backend == "web1"
    reply = private.get("/x", {**headers, "x-node-alias": "datasphere.user.front"})
    assert reply.status == 200 and reply.backend == "web1"


def test_a_key_of_another_target_is_403(private: BalancerHarness) -> None:
    reply = private.get("/aliases/front/x", bearer(ROBOT))  # robot may call hidden only
    assert reply.status == 403 and reply.header("www-authenticate") is None
    assert reply.json()["error"] == "the key sent is not one of the keys of alias 'front'"
    reply = private.get("/nodes/hidden/x", bearer(CI))  # ci may call front only
    assert reply.status == 403 and reply.json()["node"] == "hidden"


def test_a_node_called_directly_checks_its_own_access(private: BalancerHarness) -> None:
    # front is private, but web, the node behind it, is not: called directly, it is open
    assert private.get("/nodes/web/x").status == 200
    assert private.get("/x", {"x-node-id": "web"}).status == 200
    assert private.get("/nodes/hidden/x").status == 401
    assert private.get("/x", {"x-node-id": "hidden"}).status == 401
    reply = private.get("/x", {"x-node-id": "hidden", "x-api-key": ROBOT})
    assert reply.status == 200 and reply.backend == "hidden1"


def test_public_targets_are_unaffected(private: BalancerHarness) -> None:
    reply = private.get("/aliases/open/x", {"Authorization": "Bearer service-own-token"})
    assert reply.status == 200
    headers = {name.lower(): value for name, value in reply.json()["headers"]}
    assert headers["authorization"] == "Bearer service-own-token"  # not ours: passed through
    assert "x-gitops-nodes-caller" not in headers


def test_the_instance_learns_the_caller_never_the_key(private: BalancerHarness) -> None:
    reply = private.get(
        "/aliases/front/x",
        {**bearer(ANALYST), "x-api-key": ANALYST, "x-gitops-nodes-caller": "admin"},
    )
    assert reply.status == 200
    headers = {name.lower(): value for name, value in reply.json()["headers"]}
    assert headers["x-gitops-nodes-caller"] == "analyst"  # ours, not the client's claim
    assert "authorization" not in headers and "x-api-key" not in headers
    assert ANALYST not in reply.body.decode()
    # the service's own bearer token travels beside the key the balancer takes
    reply = private.get(
        "/aliases/front/x", {"x-api-key": CI, "Authorization": "Bearer service-own-token"}
    )
    headers = {name.lower(): value for name, value in reply.json()["headers"]}
    assert headers["authorization"] == "Bearer service-own-token" and "x-api-key" not in headers
    assert headers["x-gitops-nodes-caller"] == "ci"
    # on a public target nobody may claim to be a caller either
    reply = private.get("/aliases/open/x", {"x-gitops-nodes-caller": "admin"})
    assert "x-gitops-nodes-caller" not in {n.lower() for n, _ in reply.json()["headers"]}


def test_folders(balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]) -> None:
    web = start_backend("web1")
    balancer.publish(
        {"web": node(web)},
        {"front": alias(("web", 1), access=rule(("ci", CI), folders=("b1g-a", "b1g-b")))},
    )
    balancer.wait_status({"web1": "Healthy"})
    reply = balancer.get("/aliases/front/x", bearer(CI))
    assert reply.status == 403 and "needs an x-folder-id header" in reply.json()["error"]
    reply = balancer.get("/aliases/front/x", {**bearer(CI), "x-folder-id": "b1g-c"})
    assert reply.status == 403 and "the folder in x-folder-id may not call" in reply.json()["error"]
    reply = balancer.get("/aliases/front/x", {**bearer(CI), "x-folder-id": "b1g-b"})
    assert reply.status == 200
    # a folder never stands in for a key
    assert balancer.get("/aliases/front/x", {"x-folder-id": "b1g-a"}).status == 401


def test_a_denied_request_with_a_body_keeps_the_connection_usable(
    private: BalancerHarness,
) -> None:
    conn = private.connect()
    try:
        conn.request("POST", "/aliases/front/echo", body=b"x" * 100_000)
        response = conn.getresponse()
        assert response.status == 401
        response.read()
        conn.request("POST", "/aliases/front/echo", body=b"y" * 1000, headers=bearer(CI))
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b"y" * 1000
    finally:
        conn.close()


def test_the_keys_are_compared_in_constant_time(
    private: BalancerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[bytes] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module balancer.access uses
    assert private.get("/aliases/front/x", bearer(CI)).status == 200
    presented = hashlib.sha256(CI.encode()).digest()
    assert compared == [presented, presented]  # against each of front's two keys


def test_swapping_tables_makes_targets_private_and_public(private: BalancerHarness) -> None:
    assert private.get("/aliases/open/x").status == 200
    nodes = private.call(lambda: dict(private.balancer.router.table.nodes))
    private.publish(
        nodes, {"open": alias(("web", 1), access=ROBOT_ONLY), "front": alias(("web", 1))}
    )
    assert private.get("/aliases/open/x").status == 401
    assert private.get("/aliases/open/x", bearer(ROBOT)).status == 200
    assert private.get("/aliases/front/x").status == 200


def test_access_logs_name_the_caller_and_never_hold_a_key(
    make_balancer: Callable[..., BalancerHarness],
    start_backend: Callable[..., BackendProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = make_balancer(ProxySettings(access_log=True))
    web, hidden = start_backend("web1"), start_backend("hidden1")
    harness.publish(
        {"web": node(web), "hidden": node(hidden, access=ROBOT_ONLY)},
        {"front": alias(("web", 1), access=FRONT)},
    )
    harness.wait_status({"web1": "Healthy", "hidden1": "Healthy"})
    caplog.set_level(logging.DEBUG)
    replies = [
        harness.get("/aliases/front/x", bearer(CI)),
        harness.get("/aliases/front/x", {"x-api-key": ANALYST}),
        harness.get("/aliases/front/x", bearer(ROBOT)),
        harness.get("/aliases/front/x", {"Authorization": f"Api-Key {CI}x"}),
        harness.get("/aliases/front/x", {}),
    ]
    assert [r.status for r in replies] == [200, 200, 403, 401, 401]

    def logged() -> list[dict[str, Any]]:
        return [r.__dict__["fields"] for r in caplog.records if r.name.endswith(".access")]

    wait_until(lambda: len(logged()) >= 5, "five access log lines")
    lines = logged()
    assert lines[0]["caller"] == "ci" and lines[1]["caller"] == "analyst"
    assert lines[2]["status"] == 403 and lines[2]["caller"] is None
    everything = "\n".join(
        r.getMessage() + json.dumps(r.__dict__.get("fields")) for r in caplog.records
    ) + "".join(r.body.decode() + str(r.headers) for r in replies)
    for key in KEYS:
        assert key not in everything


def test_denials_are_counted_in_the_alias_metrics(private: BalancerHarness) -> None:
    private.get("/aliases/front/x")
    private.get("/aliases/front/x", bearer(ROBOT))
    lines = set(private.admin("GET", "/-/metrics").body.decode().splitlines())
    assert 'alias_http_codes_total{alias_name="front",code="401"} 1' in lines
    assert 'alias_http_codes_total{alias_name="front",code="403"} 1' in lines


def test_status_shows_who_may_call_by_name(private: BalancerHarness) -> None:
    document = private.status()
    aliases = {a["name"]: a["access"] for a in document["aliases"]}
    nodes = {n["name"]: n["access"] for n in document["nodes"]}
    assert aliases == {"front": {"keys": ["ci", "analyst"], "folders": []}, "open": None}
    assert nodes == {"hidden": {"keys": ["robot"], "folders": []}, "web": None}
    assert not any(key in str(document) for key in KEYS)


# -- the admin port ---------------------------------------------------------------------------


def test_the_admin_port_with_a_key_needs_it_except_for_healthz(
    make_balancer: Callable[..., BalancerHarness],
) -> None:
    harness = make_balancer(admin_token=ADMIN)
    for path in ("/-/status", "/-/metrics", "/-/nope"):
        reply = request(harness.admin_port, "GET", path)
        assert reply.status == 401, path
        assert reply.header("www-authenticate") == CHALLENGE
        assert "the admin port needs its key" in reply.json()["error"]
        wrong = request(harness.admin_port, "GET", path, bearer(ADMIN[:-1] + "x"))
        assert wrong.status == 401
    assert request(harness.admin_port, "GET", "/-/healthz").status == 200
    for headers in (bearer(ADMIN), {"Authorization": f"Api-Key {ADMIN}"}, {"x-api-key": ADMIN}):
        assert request(harness.admin_port, "GET", "/-/status", headers).status == 200
    assert harness.admin("GET", "/-/metrics").status == 200


def test_an_open_path_keeps_its_own_token(
    make_balancer: Callable[..., BalancerHarness], monkeypatch: pytest.MonkeyPatch
) -> None:
    # as the watch loop does with POST /-/hooks/git, which checks the hook token itself
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def hook(_request: Request) -> Response:
        return JSONResponse({"accepted": True}, status_code=202)

    original_start = Balancer.start

    async def start_with_hook(self: Balancer, options: ServeOptions) -> None:
        self.extra_routes.append(Route("/-/hooks/git", hook, methods=["POST"]))
        self.open_paths.add("/-/hooks/git")
        await original_start(self, options)

    monkeypatch.setattr(Balancer, "start", start_with_hook)
    harness = make_balancer(admin_token=ADMIN)
    assert request(harness.admin_port, "POST", "/-/hooks/git").status == 202
    assert request(harness.admin_port, "GET", "/-/status").status == 401


def test_the_admin_port_beyond_loopback_without_a_key_refuses_to_start() -> None:
    loop = new_loop()
    try:
        balancer = Balancer(loop)
        options = ServeOptions(host=HOST, port=0, admin_host="0.0.0.0", admin_port=free_port())
        with pytest.raises(AccessConfigError, match="beyond loopback, without a key"):
            loop.run_until_complete(balancer.start(options))
        assert balancer.ports() == []  # refused before listening on anything
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


# -- the execute API honours the same rules ---------------------------------------------


def execute_call(
    harness: BalancerHarness, url: str, body: Mapping[str, object], **headers: str
) -> Reply:
    return request(
        harness.port,
        "POST",
        url,
        {"content-type": "application/json", **headers},
        json.dumps(body).encode(),
    )


def test_execute_calls_to_private_targets_need_their_key(private: BalancerHarness) -> None:
    node_url = "/datasphere/v1/nodes/hidden:execute"
    alias_url = "/datasphere/v1/aliases/front:execute"
    call = {"input": {"x": 1}}
    refused = execute_call(private, node_url, call)
    assert refused.status == 401 and refused.header("www-authenticate") == CHALLENGE
    assert refused.json()["error_name"] == "Unauthorized"
    assert execute_call(private, node_url, call, authorization=f"Bearer {CI}").status == 403
    unknown = {"x-api-key": "not-a-key-at-all!"}
    assert execute_call(private, alias_url, call, **unknown).status == 401

    reply = execute_call(private, node_url, call, authorization=f"Api-Key {ROBOT}")
    assert reply.status == 200, reply.body
    seen = {name.lower(): value for name, value in reply.json()["output"]["headers"]}
    assert seen["x-gitops-nodes-caller"] == "robot" and "authorization" not in seen
    assert execute_call(private, alias_url, call, authorization=f"Bearer {CI}").status == 200


def test_an_execute_call_may_name_its_folder_in_the_body(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    web = start_backend("web1")
    balancer.publish({"web": node(web, access=rule(("ci", CI), folders=("f-1",)))})
    balancer.wait_status({"web1": "Healthy"})
    url = "/datasphere/v1/nodes/web:execute"
    key = {"authorization": f"Bearer {CI}"}
    assert execute_call(balancer, url, {"input": {}}, **key).status == 403  # no folder
    assert execute_call(balancer, url, {"folder_id": "f-2", "input": {}}, **key).status == 403
    assert execute_call(balancer, url, {"folder_id": "f-1", "input": {}}, **key).status == 200
    with_header = execute_call(balancer, url, {"input": {}}, **key, **{"x-folder-id": "f-1"})
    assert with_header.status == 200
