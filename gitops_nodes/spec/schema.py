"""The JSON Schema of a spec document, generated from the models (editors validate with it)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from gitops_nodes.spec.models import Document

SCHEMA_FILE = "schemas/gitops-nodes-v1.schema.json"


def document_schema() -> dict[str, Any]:
    """A schema any one YAML document of the spec must match."""
    schema = TypeAdapter(Document).json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gitops-nodes v1 document (kind: Node or Alias)",
        **schema,
    }


def schema_text() -> str:
    return json.dumps(document_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
