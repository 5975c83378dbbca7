"""An execute call's body, read into the input a node gets (balancer/execute.py, pure)."""

from __future__ import annotations

import json

import pytest

from balancer.execute import CallError, read_call


def test_input_is_sent_on_as_compact_json_and_the_folder_is_kept() -> None:
    body = json.dumps({"folder_id": "f", "node_id": "a", "input": {"x": [1.5, "é"], "n": None}})
    inputs, folder = read_call(body.encode(), "node", "a", None)
    assert json.loads(inputs) == {"x": [1.5, "é"], "n": None}
    assert b" " not in inputs and "é".encode() in inputs
    assert folder == "f"


def test_the_header_folder_stands_when_the_body_has_none() -> None:
    assert read_call(b'{"input": {}}', "node", "a", "from-header") == (b"{}", "from-header")
    assert read_call(b'{"folder_id": "h"}', "node", "a", "h") == (b"{}", "h")


@pytest.mark.parametrize("named", ["w", "datasphere.user.w"])
def test_an_alias_may_be_named_with_the_reference_prefix(named: str) -> None:
    body = json.dumps({"aliasName": named, "input": {"v": 1}}).encode()
    assert read_call(body, "alias", "w", None) == (b'{"v":1}', None)


@pytest.mark.parametrize(
    ("body", "kind", "field", "fragment"),
    [
        (b"\xff\xfe{", "node", None, "not JSON"),
        (b"  ", "node", None, '"node_id": ..., "input"'),
        (b'"text"', "alias", None, '"alias_name": ..., "input"'),
        (b'{"input": 3}', "node", "input", "got a number"),
        (b'{"input": true}', "node", "input", "got a boolean"),
        (b'{"node_id": null, "input": {}}', "node", "node_id", "got null"),
        (b'{"folder_id": ["f"]}', "node", "folder_id", "got an array"),
        (b'{"nodeId": "a", "node_id": "a"}', "node", "node_id", "same field"),
        (
            b'{"node_id": "a", "extra": 1}',
            "node",
            "extra",
            "the fields are: folder_id, input, node_id",
        ),
    ],
)
def test_a_bad_body_names_its_field(
    body: bytes, kind: str, field: str | None, fragment: str
) -> None:
    with pytest.raises(CallError) as caught:
        read_call(body, kind, "a", None)
    assert caught.value.field == field
    assert fragment in str(caught.value), str(caught.value)
