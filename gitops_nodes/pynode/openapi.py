"""The OpenAPI 3.1 document of a python node, generated once at start from its config.

It describes `POST /` (and its alias `POST /predict`): a flat JSON object of the input
variables in, a flat JSON object of the output variables out, each variable with the JSON
Schema of its declared type; and the error answers (400, 408, 413, 422, 429, 500, 503) with
their bodies.
"""

from __future__ import annotations

from typing import Any

from gitops_nodes.pynode.config import NodeConfig, Variable
from gitops_nodes.pynode.types import json_schema

OPENAPI_VERSION = "3.1.0"


def _object_schema(title: str, variables: tuple[Variable, ...]) -> dict[str, Any]:
    properties = {}
    for variable in variables:
        schema = json_schema(variable.type)
        schema["description"] = f"{variable.type.name}: {variable.type.expected}"
        properties[variable.name] = schema
    return {
        "title": title,
        "type": "object",
        "properties": properties,
        "required": [v.name for v in variables],
        "additionalProperties": False,
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def document(config: NodeConfig, max_bytes: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the node's API, as a JSON-ready dict."""
    limit = f"{max_bytes / 2**20:g} MB"
    call = {
        "summary": "Run the node's code on one set of inputs",
        "description": (
            "Sets the input variables in the node's interpreter, runs its code, and answers "
            "with the output variables. Requests to one instance run one at a time, and the "
            f"interpreter's state persists between them. Bodies are limited to {limit}."
        ),
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Inputs"}}},
        },
        "responses": {
            "200": _json("Outputs", "The output variables"),
            "400": _json("Error", "The body is not JSON"),
            "408": _json("Error", "The request body stopped coming before it was whole"),
            "413": _json("Error", f"The request body is over {limit}"),
            "422": _json("InvalidInput", "Inputs missing, of the wrong type, or unknown"),
            "429": _json("Error", "Too many pipelined requests wait on this connection"),
            "500": _json(
                "Error",
                "The code raised (error_name is the exception's type), did not set an output, "
                f"or the response is over {limit}",
            ),
            "503": _json(
                "Error",
                "The instance is receiving too many request bodies at once (Busy) or serves "
                "too many connections (TooManyConnections): try again in a moment",
            ),
        },
    }
    error = {
        "type": "object",
        "properties": {
            "error_name": {"type": "string"},
            "error_message": {"type": "string"},
            "traceback": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["error_name", "error_message"],
    }
    invalid = {
        "type": "object",
        "properties": {
            "error_name": {"const": "InvalidInput"},
            "error_message": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "field": {"type": ["string", "null"]},
                        "expected": {"type": "string"},
                        "problem": {"type": "string"},
                    },
                    "required": ["field", "expected", "problem"],
                },
            },
        },
        "required": ["error_name", "error_message", "errors"],
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": config.name, "version": config.version},
        "paths": {
            "/": {"post": {"operationId": "call", **call}},
            "/predict": {"post": {"operationId": "predict", **call}},
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "200 once the checkpoint is loaded and the set-up code ran",
                    "responses": {"200": {"description": "The instance is ready"}},
                }
            },
        },
        "components": {
            "schemas": {
                "Inputs": _object_schema("Inputs", config.inputs),
                "Outputs": _object_schema("Outputs", config.outputs),
                "Error": error,
                "InvalidInput": invalid,
            }
        },
    }
