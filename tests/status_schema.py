"""Checks a `/-/status` document against schemas/gitops-nodes-status-v1.schema.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA = Path(__file__).parents[1] / "schemas" / "gitops-nodes-status-v1.schema.json"


def validate_status(document: dict[str, Any]) -> None:
    """Raise jsonschema's ValidationError when document does not follow the schema."""
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(document)
