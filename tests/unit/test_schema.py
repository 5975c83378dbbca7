"""The committed JSON Schema is the one the models generate, and it accepts what the loader does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import yaml

from gitops_nodes.spec.models import AliasDocument, NodeDocument
from gitops_nodes.spec.schema import SCHEMA_FILE, schema_text

ROOT = Path(__file__).resolve().parents[2]
_MODELS: dict[str, type[pydantic.BaseModel]] = {"Node": NodeDocument, "Alias": AliasDocument}
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
        (lambda d: d.update(kind="Service"), "is not one of ['Node', 'Alias']"),
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
    """Every error message, including those of the branches that failed."""
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


SCHEMA = json.loads(schema_text())


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema and len(schema) == 1:
        schema = SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _properties(schema: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (path, schema) of a property the schema declares, in $defs and at the top."""
    found = []
    if isinstance(schema, dict):
        for name, value in schema.get("properties", {}).items():
            found.append((f"{where}.{name}", value))
        for key, value in schema.items():
            if key not in ("if", "oneOf", "allOf", "contains"):  # rules, not declarations
                found.extend(_properties(value, f"{where}/{key}"))
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            found.extend(_properties(value, f"{where}[{index}]"))
    return found


PROPERTIES = _properties(SCHEMA)


def test_every_field_has_a_description() -> None:
    # Editors show it on hover and in completion; a field added without one fails here.
    assert len(PROPERTIES) > 50
    missing = [where for where, prop in PROPERTIES if not _resolve(prop).get("description")]
    assert missing == [], "give these fields a Field(description=...) in spec/models.py"


def test_no_field_title_repeats_its_name() -> None:
    # pydantic's titles ("Minhealthy") are what an editor would show before the description.
    assert [where for where, prop in PROPERTIES if "title" in prop] == []


@pytest.mark.parametrize(
    ("where", "prop"),
    [(w, p) for w, p in PROPERTIES if "default" in p],
    ids=[w for w, p in PROPERTIES if "default" in p],
)
def test_every_default_validates_against_its_own_field(where: str, prop: dict[str, Any]) -> None:
    # Completion inserts the default: a duration default of 15.0 (a number) would insert a
    # value the schema and `validate` both refuse.
    field = {"$defs": SCHEMA["$defs"], **prop}
    jsonschema.Draft202012Validator(field).validate(prop["default"])


def test_documents_are_told_apart_by_kind_with_if_then() -> None:
    # JSON Schema tools ignore OpenAPI's discriminator: with oneOf, a Node's error was
    # reported as the Alias branch's "Additional properties are not allowed".
    assert "oneOf" not in SCHEMA and "discriminator" not in SCHEMA
    branches = {b["if"]["properties"]["kind"]["const"]: b["then"]["$ref"] for b in SCHEMA["allOf"]}
    assert branches == {"Node": "#/$defs/NodeDocument", "Alias": "#/$defs/AliasDocument"}
    assert "discriminator" not in json.dumps(SCHEMA)


def test_a_bad_node_is_reported_by_the_node_branch_alone(
    validator: jsonschema.protocols.Validator,
) -> None:
    document = json.loads(json.dumps(NODE))
    document["spec"]["instances"] = 0
    best = jsonschema.exceptions.best_match(validator.iter_errors(document))
    assert best is not None
    assert best.message == "0 is less than the minimum of 1"
    assert list(best.absolute_path) == ["spec", "instances"]
    messages = _messages(validator.iter_errors(document))
    assert not any("Additional properties" in message for message in messages), messages


ALIAS = {
    "apiVersion": "gitops-nodes/v1",
    "kind": "Alias",
    "metadata": {"name": "web"},
    "spec": {"nodes": [{"node": "web-v1", "weight": 0}, {"node": "web-v2"}]},
}
PYTHON = {"code": "predict.py", "inputs": {"x": "float"}, "outputs": {"y": "float"}}
KEY = {"name": "ci", "fromEnv": "CI_KEY"}


def _changed(base: dict[str, Any], change: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(base))
    change(document)
    return document


# Rules the models check in validators, which the schema states too: (document, fragment of
# the error an editor or check-jsonschema shows).
RULES = {
    "image and python": (_changed(NODE, lambda d: d["spec"].update(python=PYTHON)), "valid under"),
    "neither image nor python": (
        _changed(NODE, lambda d: d["spec"].pop("image")),
        "is not valid under any",
    ),
    "image name and build": (
        _changed(NODE, lambda d: d["spec"]["image"].update(build="web")),
        "valid under",
    ),
    "env key not a name": (
        _changed(NODE, lambda d: d["spec"]["env"].update({"1-BAD": "x"})),
        "'1-BAD' does not match",
    ),
    "alias weights all 0": (
        _changed(ALIAS, lambda d: d["spec"]["nodes"][1].update(weight=0)),
        "does not contain items matching",
    ),
    "key from env and file": (
        _changed(ALIAS, lambda d: d["spec"].update(access={"keys": [{**KEY, "fromFile": "/k"}]})),
        "valid under",
    ),
    "key from nowhere": (
        _changed(ALIAS, lambda d: d["spec"].update(access={"keys": [{"name": "ci"}]})),
        "is not valid under any",
    ),
    "folder twice": (
        _changed(ALIAS, lambda d: d["spec"].update(access={"keys": [KEY], "folders": ["a", "a"]})),
        "non-unique elements",
    ),
    "rollout step of 100": (
        _changed(ALIAS, lambda d: d["spec"].update(rollout={"steps": [50, 100]})),
        "100 is greater than the maximum of 99",
    ),
    "log file under 64k": (
        _changed(NODE, lambda d: d["spec"].update(logs={"maxSize": 1000})),
        "1000 is less than the minimum of 64000",
    ),
}


@pytest.mark.parametrize(("name"), list(RULES))
def test_the_schema_states_the_models_rules(
    validator: jsonschema.protocols.Validator, name: str
) -> None:
    document, fragment = RULES[name]
    messages = _messages(validator.iter_errors(document))
    assert any(fragment in message for message in messages), messages
    with pytest.raises(pydantic.ValidationError):
        _MODELS[document["kind"]].model_validate(document)


@pytest.mark.parametrize(
    "document",
    [
        ALIAS,
        _changed(NODE, lambda d: d["spec"].update(logs={"maxSize": 100_000})),
        _changed(NODE, lambda d: d["spec"].update(image=None, python=PYTHON)),
        _changed(NODE, lambda d: d["spec"]["image"].update(build=None)),
    ],
    ids=["one weight left out (100)", "log file of 100000 bytes", "image null", "build null"],
)
def test_what_the_models_accept_the_schema_accepts(
    validator: jsonschema.protocols.Validator, document: dict[str, Any]
) -> None:
    _MODELS[document["kind"]].model_validate(document)
    assert _messages(validator.iter_errors(document)) == []
