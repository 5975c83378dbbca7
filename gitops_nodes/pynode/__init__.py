"""The in-container runtime of `python` nodes: serves one node's code over HTTP.

It runs inside the node's image, so it imports only the standard library, httptools, and,
when the image has them, uvloop and orjson; never the Docker SDK, pydantic, or the rest of
gitops_nodes. Start it with::

    python3 -m gitops_nodes.pynode.server --config /app/node.json --port 8080

Modules: `config` (the node's JSON config, checked against its code), `types` (the declared
variable types: input checks and JSON Schemas), `node` (the interpreter state and one call),
`openapi` (the API document), `codec` (JSON), `server` (the HTTP Protocol server).
This file imports nothing, so that `-m gitops_nodes.pynode.server` loads the server once.
"""

from __future__ import annotations
