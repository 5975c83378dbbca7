"""The JSON Schema of a spec document, generated from the models (editors validate with it).

Written for the tools that read it, not only for validators: yaml-language-server (editors)
and check-jsonschema (pre-commit) ignore OpenAPI's `discriminator`, so a document's kind is
chosen with `if`/`then` on `kind` and every error comes from the right kind's branch; each
field carries a description (hover), defaults are written as YAML would be (completion
inserts them), and the models' rules that JSON Schema can state are stated (see models.py's
`json_schema_extra`). What it cannot state (a node an alias names must exist, minHealthy ≤
instances, files that must exist) only `validate` checks.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema

from gitops_nodes.spec.models import API_VERSION, EXPECTED, AliasDocument, NodeDocument

SCHEMA_FILE = "schemas/gitops-nodes-v1.schema.json"
_DOCUMENTS: dict[str, type[BaseModel]] = {"Node": NodeDocument, "Alias": AliasDocument}
_VALIDATION: JsonSchemaMode = "validation"


class _Generator(GenerateJsonSchema):
    """pydantic's generator without the titles it makes from field names ("Minhealthy"):
    editors show a title before the description, and these say nothing."""

    def field_title_should_be_set(
        self,
        schema: core_schema.ModelField
        | core_schema.DataclassField
        | core_schema.TypedDictField
        | core_schema.ComputedField
        | core_schema.CoreSchema,
    ) -> bool:
        return False


def document_schema() -> dict[str, Any]:
    """A schema any one YAML document of the spec must match."""
    _, generated = models_json_schema(
        [(model, _VALIDATION) for model in _DOCUMENTS.values()],
        by_alias=True,
        ref_template="#/$defs/{model}",
        schema_generator=_Generator,
    )
    defs: dict[str, Any] = generated["$defs"]
    for definition in defs.values():
        _tidy(definition)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gitops-nodes v1 document (kind: Node or Alias)",
        "description": "One document of a gitops-nodes spec: a Node or an Alias. "
        "`gitops-nodes validate` checks what a schema cannot (see the README's Editors).",
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {
                "enum": list(_DOCUMENTS),
                "description": NodeDocument.model_fields["kind"].description,
            },
        },
        # One branch per kind: validators report the errors of that kind's branch only.
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"$ref": f"#/$defs/{model.__name__}"},
            }
            for kind, model in _DOCUMENTS.items()
        ],
        "defaultSnippets": _snippets(),
        "$defs": defs,
    }


def _tidy(schema: Any) -> None:
    """Shapes pydantic's output for editors, in place: a type's EXPECTED text joins the
    description of each field of that type, `default: null` (which completion would insert)
    goes, and a mapping whose keys have a pattern admits no other keys."""
    if isinstance(schema, list):
        for item in schema:
            _tidy(item)
        return
    if not isinstance(schema, dict):
        return
    for value in schema.values():
        _tidy(value)
    if schema.get("default", ...) is None:
        del schema["default"]
    if "patternProperties" in schema and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    if isinstance(schema.get("description"), str):
        # Docstrings are wrapped at 100 columns; editors render each break as a paragraph.
        schema["description"] = " ".join(schema["description"].split())
    expected = schema.pop(EXPECTED, None)
    for member in schema.get("anyOf", ()):
        expected = member.pop(EXPECTED, None) or expected
    if expected:
        own = schema.get("description")
        schema["description"] = f"{own} {expected}" if own else expected


def _snippets() -> list[dict[str, Any]]:
    """Whole documents an editor offers in an empty document: each valid as inserted."""
    head = {"apiVersion": API_VERSION}
    return [
        {
            "label": "Node (image)",
            "description": "a node serving a Docker image",
            "body": {
                **head,
                "kind": "Node",
                "metadata": {"name": "${1:web}"},
                "spec": {
                    "image": {"name": "${2:python:3.11-slim}", "port": "^${3:8080}"},
                    "instances": "^${4:1}",
                    "healthCheck": {"path": "${5:/healthz}"},
                },
            },
        },
        {
            "label": "Node (python)",
            "description": "a node made from Python code",
            "body": {
                **head,
                "kind": "Node",
                "metadata": {"name": "${1:model}"},
                "spec": {
                    "python": {
                        "code": "${2:predict.py}",
                        "inputs": {"${3:features}": "${4:list[float]}"},
                        "outputs": {"${5:score}": "${6:float}"},
                    },
                },
            },
        },
        {
            "label": "Alias",
            "description": "a stable name routing to nodes by weight",
            "body": {
                **head,
                "kind": "Alias",
                "metadata": {"name": "${1:web}"},
                "spec": {"nodes": [{"node": "${2:web-v1}", "weight": "^${3:100}"}]},
            },
        },
    ]


def schema_text() -> str:
    return json.dumps(document_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
