"""forward(): the header lines an instance gets, decided without a socket or a loop."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from balancer.access import Denial, Guard
from balancer.forwarding import Forward, forward, forwarded_value, hop_of, without_keys
from balancer.head import Head, read_head
from balancer.table import AccessKey, AccessRule

KEY = b"robot-key-00112233445566778899"
OTHER = b"other-key-99887766554433221100"
RULE = AccessRule(
    (
        AccessKey("robot", hashlib.sha256(KEY).hexdigest()),
        AccessKey("other", hashlib.sha256(OTHER).hexdigest()),
    )
)
GUARD = Guard("node", "p", RULE, frozenset(bytes.fromhex(k.sha256) for k in RULE.keys))
FOLDERS = Guard(
    "node",
    "f",
    AccessRule(RULE.keys, ("folder-1",)),
    frozenset(bytes.fromhex(k.sha256) for k in RULE.keys),
)
UNTRUSTED = hop_of("10.0.0.7", False)
TRUSTED = hop_of("10.0.0.7", True)


def head_of(*lines: bytes, target: bytes = b"/nodes/p/x") -> Head:
    headers = [tuple(line.split(b": ", 1)) for line in lines]
    return read_head(b"GET", target, "1.1", True, headers)  # type: ignore[arg-type]


def lines_of(result: Forward | Denial) -> list[tuple[bytes, bytes]]:
    assert isinstance(result, Forward), result
    pairs = []
    for line in result.lines.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            pairs.append((name.lower(), value))
    return pairs


def values(result: Forward | Denial, name: bytes) -> list[bytes]:
    return [v for n, v in lines_of(result) if n == name]


def test_a_public_request_gets_the_balancer_s_view_of_its_hop() -> None:
    head = head_of(b"Host: h", b"Accept: */*")
    result = forward(head, UNTRUSTED, None, None, head.prefix)
    assert lines_of(result) == [
        (b"host", b"h"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"10.0.0.7"),
        (b"x-forwarded-proto", b"http"),
        (b"forwarded", b"for=10.0.0.7;host=h;proto=http"),
        (b"x-forwarded-host", b"h"),
        (b"x-forwarded-prefix", b"/nodes/p"),
    ]
    assert isinstance(result, Forward) and result.caller is None and result.affinity_key is None


CLAIMS = (
    b"X-Forwarded-For: 1.1.1.1",
    b"x-forwarded-for: 2.2.2.2, 3.3.3.3",
    b"X-Forwarded-Proto: https",
    b"X-Forwarded-Host: public.example",
    b"X-Forwarded-Prefix: /api/",
    b"Forwarded: for=1.1.1.1",
    b'forwarded: for="[2001:db8::1]";proto=https',
)


def test_an_untrusted_peer_s_claims_are_replaced() -> None:
    head = head_of(b"Host: h", *CLAIMS)
    result = forward(head, UNTRUSTED, None, None, head.prefix)
    assert values(result, b"x-forwarded-for") == [b"10.0.0.7"]
    assert values(result, b"x-forwarded-proto") == [b"http"]
    assert values(result, b"x-forwarded-host") == [b"h"]
    assert values(result, b"x-forwarded-prefix") == [b"/nodes/p"]
    assert values(result, b"forwarded") == [b"for=10.0.0.7;host=h;proto=http"]


def test_a_trusted_peer_s_claims_are_joined_in_order_and_appended_to() -> None:
    head = head_of(b"Host: h", *CLAIMS)
    result = forward(head, TRUSTED, None, None, head.prefix)
    assert values(result, b"x-forwarded-for") == [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7"]
    assert values(result, b"x-forwarded-proto") == [b"https"]
    assert values(result, b"x-forwarded-host") == [b"public.example"]
    assert values(result, b"x-forwarded-prefix") == [b"/api/nodes/p"]
    assert values(result, b"forwarded") == [
        b'for=1.1.1.1, for="[2001:db8::1]";proto=https, for=10.0.0.7;host=h;proto=http'
    ]
    # without claims, a trusted peer is treated like any other
    bare = head_of(b"Host: h")
    assert forward(bare, TRUSTED) == forward(bare, UNTRUSTED)


def test_routing_by_header_has_no_prefix() -> None:
    head = head_of(b"Host: h", b"x-node-id: p", b"X-Forwarded-Prefix: /evil", target=b"/x")
    assert head.prefix == b""
    assert values(forward(head, UNTRUSTED, None, None, head.prefix), b"x-forwarded-prefix") == []
    assert values(forward(head, TRUSTED, None, None, head.prefix), b"x-forwarded-prefix") == [
        b"/evil"
    ]


def test_peers_without_an_address_and_ipv6_peers() -> None:
    assert hop_of("", False).node == b"unknown"
    assert hop_of("unknown", True).address == b"unknown"
    v6 = hop_of("2001:db8::1", False)
    head = head_of(b"Host: [::1]:80")
    assert values(forward(head, v6), b"forwarded") == [
        b'for="[2001:db8::1]";host="[::1]:80";proto=http'
    ]
    assert forwarded_value(b'a"b\\c') == b'"a\\"b\\\\c"'
    assert forwarded_value(b"example.com") == b"example.com"


def test_the_first_usable_request_id_is_the_client_s() -> None:
    head = head_of(b"X-Request-Id: first", b"X-Request-Id: second")
    assert head.request_id == b"first"
    assert values(forward(head, UNTRUSTED), b"x-request-id") == []  # the caller writes it once
    for bad in (b"", b"r" * 201, b"has space", "é".encode()):
        assert head_of(b"X-Request-Id: " + bad).request_id == b""
    assert head_of(b"X-Request-Id: \x01", b"X-Request-Id: ok").request_id == b"ok"


def test_the_affinity_key_is_the_alias_header_s_value() -> None:
    head = head_of(b"X-Session-Id: s-1", b"x-session-id: s-2")
    result = forward(head, UNTRUSTED, None, b"x-session-id", b"")
    assert isinstance(result, Forward) and result.affinity_key == b"s-1"
    assert values(result, b"x-session-id") == [b"s-1", b"s-2"]  # and it goes on


def test_a_private_target_s_401_and_403_are_the_guard_s() -> None:
    assert forward(head_of(b"Host: h"), UNTRUSTED, GUARD) == GUARD.missing
    assert forward(head_of(b"X-Api-Key: not-a-key-of-anyone"), UNTRUSTED, GUARD) == (GUARD.unknown)
    keyed = head_of(b"X-Api-Key: " + KEY)
    assert forward(keyed, UNTRUSTED, FOLDERS) == FOLDERS.no_folder
    # an execute call's folder comes from its body
    admitted = forward(keyed, UNTRUSTED, FOLDERS, folder="folder-1")
    assert isinstance(admitted, Forward) and admitted.caller == "robot"
    assert forward(keyed, UNTRUSTED, FOLDERS, folder="folder-2") == FOLDERS.wrong_folder


KEY_LINES = [
    b"X-Api-Key: " + KEY,
    b"x-api-key: " + KEY,
    b"X-API-KEY: " + OTHER,
    b"Authorization: Bearer " + KEY,
    b"authorization: BEARER  " + KEY,
    b"AUTHORIZATION: Api-Key " + OTHER,
    b"Authorization: api-key " + KEY,
]


@pytest.mark.parametrize(
    "lines",
    [
        *([line] for line in KEY_LINES if KEY in line),  # each alone
        *(list(pair) for pair in itertools.permutations(KEY_LINES, 2)),  # two, both orders
        KEY_LINES,
        list(reversed(KEY_LINES)),
    ],
)
def test_no_key_ever_reaches_an_instance(lines: list[bytes]) -> None:
    head = head_of(b"Host: h", *lines, b"Accept: */*")
    result = forward(head, UNTRUSTED, GUARD)
    if isinstance(result, Denial):  # e.g. only the other caller's key: admitted as "other"
        pytest.fail(f"{lines} was refused: {result}")
    assert KEY not in result.lines and OTHER not in result.lines, result.lines
    assert values(result, b"x-gitops-nodes-caller") == [result.caller.encode()]  # type: ignore[union-attr]
    assert values(result, b"accept") == [b"*/*"] and values(result, b"host") == [b"h"]


def test_a_service_s_own_bearer_token_goes_on_beside_an_x_api_key() -> None:
    head = head_of(b"X-Api-Key: " + KEY, b"Authorization: Bearer service-token")
    result = forward(head, UNTRUSTED, GUARD)
    assert values(result, b"authorization") == [b"Bearer service-token"]
    assert values(result, b"x-api-key") == []
    # other schemes are never keys
    assert without_keys(b"Authorization: Basic dXNlcjpwYXNz\r\n", KEY) == (
        b"Authorization: Basic dXNlcjpwYXNz\r\n"
    )


def test_nobody_claims_to_be_a_caller() -> None:
    head = head_of(b"X-Gitops-Nodes-Caller: admin")
    assert values(forward(head, UNTRUSTED), b"x-gitops-nodes-caller") == []
    keyed = head_of(b"X-Gitops-Nodes-Caller: admin", b"X-Api-Key: " + KEY)
    assert values(forward(keyed, UNTRUSTED, GUARD), b"x-gitops-nodes-caller") == [b"robot"]


def test_replaced_lines_are_the_caller_s() -> None:
    head = head_of(b"Content-Type: text/plain", b"content-type: x/y", b"Host: h")
    result = forward(head, UNTRUSTED, replace=b"content-type: application/json\r\n")
    assert values(result, b"content-type") == [b"application/json"]
