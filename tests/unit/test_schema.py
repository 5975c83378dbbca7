"""The committed JSON Schema is the one the models generate, and it accepts what the loader does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gitops_nodes.spec.schema import SCHEMA_FILE, schema_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_REPO = ROOT / "example-repo"


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(schema_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _example_documents() -> list[tuple[str, Any]]:
    found = []
    for path in sorted([*EXAMPLE_REPO.rglob("*.yaml"), *EXAMPLE_REPO.rglob("*.yml")]):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document is not None:
                found.append((f"{path.relative_to(EXAMPLE_REPO)}#{index}", document))
    return found


EXAMPLES = _example_documents()


def test_committed_schema_matches_the_models() -> None:
    committed = (ROOT / SCHEMA_FILE).read_text()
    assert committed == schema_text(), (
        f"{SCHEMA_FILE} is out of date with the models; "
        f"run `gitops-nodes schema > {SCHEMA_FILE}` and commit the result"
    )


def test_example_repo_has_nodes_and_aliases() -> None:
    kinds = {document["kind"] for _, document in EXAMPLES}
    assert kinds == {"Node", "Alias"}


@pytest.mark.parametrize(("where", "document"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_every_example_document_validates(
    validator: jsonschema.protocols.Validator, where: str, document: Any
) -> None:
    errors = [error.message for error in validator.iter_errors(document)]
    assert errors == [], where


NODE = {
    "apiVersion": "gitops-nodes/v1",
    "kind": "Node",
    "metadata": {"name": "web"},
    "spec": {
        "image": {"name": "busybox", "port": 8080},
        "env": {"PORT": "8080", "DEBUG": "true", "NAME": "x"},
        "resources": {"memory": "256Mi", "cpus": 0.5},
        "healthCheck": {"path": "/healthz", "interval": "1m30s"},
    },
}


def test_a_minimal_node_validates(validator: jsonschema.protocols.Validator) -> None:
    validator.validate(NODE)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d["spec"].update(replicas=2), "replicas"),
        (lambda d: d["spec"]["image"].update(tag="x"), "tag"),
        (lambda d: d.update(kind="Service"), "'Node' was expected"),
        (lambda d: d["metadata"].update(name="Web_1"), "Web_1"),
        (lambda d: d["spec"]["healthCheck"].update(interval="10"), "10"),
        (lambda d: d["spec"]["resources"].update(memory="1GB"), "1GB"),
        (lambda d: d["spec"].update(instances=1001), "1001"),
        (lambda d: d["spec"]["env"].update(PORT=8080), "8080"),
        (lambda d: d["spec"]["env"].update(NUL="a\0b"), "a\\x00b"),
        (lambda d: d["spec"]["image"].update(name="Not A Valid/Image!!:tag"), "Not A Valid"),
        (lambda d: d["spec"]["healthCheck"].update(path="/a b"), "/a b"),
        (lambda d: d["spec"]["resources"].update(cpus=2048), "2048"),
        (lambda d: d["spec"]["resources"].update(memory=2**41), str(2**41)),
    ],
    ids=[
        "unknown spec field",
        "unknown image field",
        "kind",
        "name",
        "duration",
        "size",
        "instances over the maximum",
        "env value not a string",
        "env value with NUL",
        "image reference",
        "health path with a space",
        "cpus over the maximum",
        "memory over the maximum",
    ],
)
def test_a_bad_document_fails_schema_validation(
    validator: jsonschema.protocols.Validator, change: Any, where: str
) -> None:
    document = json.loads(json.dumps(NODE))
    change(document)
    messages = _messages(validator.iter_errors(document))
    assert messages, f"the schema accepted a document with {where!r}"
    assert any(where in message for message in messages), messages


def _messages(errors: Any) -> list[str]:
    """Every error message, including those of the oneOf branches that failed."""
    found = []
    for error in errors:
        found.append(error.message)
        found.extend(_messages(error.context or ()))
    return found


def test_patterns_use_only_what_ecma_regular_expressions_share_with_python() -> None:
    # Editors compile a schema's patterns as ECMA 262; Python's named groups and inline flags
    # are not ECMA and would break the whole schema there.
    text = schema_text()
    assert "(?P<" not in text
    assert "(?i" not in text and "(?x" not in text
