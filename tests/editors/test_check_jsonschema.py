"""check-jsonschema, the JSON Schema checker pre-commit users run, reads the schema as
`validate` reads the spec: the schema is valid under its metaschema, and a broken document
gets the error of its own kind's branch (not another kind's "Additional properties")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schemas" / "gitops-nodes-v1.schema.json"
HEAD = "apiVersion: gitops-nodes/v1\nkind: {kind}\nmetadata: {{name: web}}\nspec:\n"
NODE = HEAD.format(kind="Node") + "  image: {name: busybox, port: 8080}\n"
ALIAS = HEAD.format(kind="Alias") + "  nodes: [{node: web-v1, weight: 0}, {node: web-v2}]\n"


def _check(*args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def test_the_schema_is_valid_under_its_metaschema() -> None:
    assert _check("--check-metaschema", str(SCHEMA)) == (0, "ok -- validation done\n")


# A broken document and the one error check-jsonschema must print for it.
BROKEN = {
    "instances 0": (NODE + "  instances: 0\n", "$.spec.instances: 0 is less than the minimum of 1"),
    "unknown node field": (
        NODE + "  replicas: 3\n",
        "$.spec: Additional properties are not allowed ('replicas' was unexpected)",
    ),
    "duration without unit": (
        NODE + '  endpoint: {timeout: "15"}\n',
        "$.spec.endpoint.timeout: '15' does not match",
    ),
    "env key": (
        NODE + "  env: {1-BAD: x}\n",
        "$.spec.env: '1-BAD' does not match any of the regexes",
    ),
    "image and python": (
        NODE + "  python: {code: a.py, inputs: {x: int}, outputs: {y: int}}\n",
        "is valid under each of",
    ),
    "alias weights all 0": (
        ALIAS.replace("{node: web-v2}", "{node: web-v2, weight: 0}"),
        "{'node': 'web-v2', 'weight': 0}] does not contain items matching",
    ),
    "unknown alias field": (
        ALIAS + "  bogus: true\n",
        "$.spec: Additional properties are not allowed ('bogus' was unexpected)",
    ),
    "unknown kind": (
        "apiVersion: gitops-nodes/v1\nkind: Service\n",
        "$.kind: 'Service' is not one of ['Node', 'Alias']",
    ),
}


def test_each_broken_document_gets_its_own_kinds_error(tmp_path: Path) -> None:
    # One run for every file, the example's single-document files too (check-jsonschema takes
    # seconds to start); its output has a `<file>::<path>: <message>` line per error.
    examples = sorted(str(p) for p in (ROOT / "example-repo" / "aliases").glob("*.yaml"))
    assert len(examples) == 3
    files = {}
    for name, (text, _) in BROKEN.items():
        files[name] = tmp_path / (name.replace(" ", "-") + ".yaml")
        files[name].write_text(text)
    code, output = _check("--schemafile", str(SCHEMA), *examples, *map(str, files.values()))
    assert code == 1, output
    assert not [line for line in output.splitlines() if "example-repo" in line], output
    for name, (_, expected) in BROKEN.items():
        errors = [line for line in output.splitlines() if f"{files[name]}::" in line]
        assert len(errors) == 1, (name, errors)
        assert expected in errors[0], name


def test_multi_document_files_are_refused_so_the_hook_runs_validate() -> None:
    # Why the README points pre-commit users at the gitops-nodes-validate hook.
    code, output = _check("--schemafile", str(SCHEMA), str(ROOT / "example-repo/nodes/models.yaml"))
    assert code == 1
    assert "expected a single document" in output
