"""Editors check every document: yaml-language-server (VS Code's YAML extension and others),
driven over stdio as an editor drives it, against the example repository and broken copies.

Two set-ups are proven, the ones the README shows: a `# yaml-language-server: $schema=...`
line in every document (the example's YAML files), and the editor's `yaml.schemas` setting
mapping the spec folders to the schema (the example's .vscode/settings.json). One line at the
top of a file covers its first document only; a test pins that too, since it is why the
example repeats the line.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitops_nodes.spec.load import load_spec
from gitops_nodes.spec.models import AliasDocument, NodeDocument, NodeSpec
from gitops_nodes.spec.schema import SCHEMA_FILE
from tests.editors.lsp import LanguageServer

ROOT = Path(__file__).resolve().parents[2]
MODELINE = "# yaml-language-server: $schema=../../schemas/gitops-nodes-v1.schema.json\n"
# A third document for the multi-document file: an image node after the two python ones.
THIRD = """---
{modeline}apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: echo
spec:
  image:
    build: sentiment
    port: 8080
  healthCheck: {{path: /healthz}}
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example repository beside a schemas/ folder, as in this repository."""
    base = tmp_path_factory.mktemp("editors")
    (base / "schemas").mkdir()
    shutil.copy(ROOT / SCHEMA_FILE, base / SCHEMA_FILE)
    shutil.copytree(ROOT / "example-repo", base / "example-repo")
    return base / "example-repo"


@pytest.fixture(scope="module")
def server(workspace: Path) -> Iterator[LanguageServer]:
    """One yaml-language-server for the module, configured as the example's
    .vscode/settings.json configures VS Code."""
    vscode = json.loads((workspace / ".vscode" / "settings.json").read_text())
    settings = {key.removeprefix("yaml."): value for key, value in vscode.items()}
    settings |= {"validate": True, "completion": True, "hover": True}
    ls = LanguageServer(workspace, settings)
    yield ls
    ls.close()


def _three_documents(workspace: Path, modelines: bool) -> str:
    # The example's first two documents (its two python nodes), then an image node.
    documents = (workspace / "nodes" / "models.yaml").read_text().split("---\n")
    text = "---\n".join(documents[:2]) + THIRD.format(modeline=MODELINE)
    if not modelines:
        text = "".join(line for line in text.splitlines(True) if "yaml-language-server" not in line)
    return text


# Where each set-up's file is: `more/` is outside the folders the settings map, so only its
# modelines can bring the schema; `nodes/` is mapped by the settings and its copy has no
# modeline.
SETUPS = {
    "a modeline per document": ("more", True),
    "settings mapping the folder": ("nodes", False),
}


def _file(workspace: Path, setup: str) -> tuple[Path, str]:
    folder, modelines = SETUPS[setup]
    return workspace / folder / "three.yaml", _three_documents(workspace, modelines)


def _diagnostics(found: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return sorted((d["range"]["start"]["line"], d["message"]) for d in found)


def test_the_example_files_have_no_diagnostics(server: LanguageServer, workspace: Path) -> None:
    files = sorted(workspace.rglob("*.yaml"))
    assert len(files) == 5
    for path in files:
        text = path.read_text()
        assert text.count(MODELINE) == text.count("kind:"), f"{path}: a modeline per document"
        assert _diagnostics(server.open(path)) == [], path
    # Without their modelines the settings still cover them.
    for path in files:
        bare = "".join(line for line in path.read_text().splitlines(True) if line != MODELINE)
        assert _diagnostics(server.open(path.with_name("bare-" + path.name), bare)) == []


# A line put right under each document's `spec:` line, and what the editor must say there.
BROKEN = {
    "unknown field": ("  bogus: true", "Property bogus is not allowed."),
    "misnamed field": ("  replicas: 3", "Property replicas is not allowed."),
    "below the minimum": ("  maintenanceLimit: 0", "Value is below the minimum of 1."),
    "duration without unit": (
        '  endpoint: {timeout: "15"}',
        "expected a duration such as 500ms, 2s, 1m or 1m30s",
    ),
    "env key": ("  env: {1-BAD: x}", "Property 1-BAD is not allowed."),
    "not a boolean": ("  suspended: yes", 'Incorrect type. Expected "boolean".'),
}


def _under_spec(text: str, added: str) -> tuple[str, list[int]]:
    """The text with `added` under every `spec:` line, and the lines it landed on (0-based)."""
    lines, at = [], []
    for line in text.splitlines():
        lines.append(line)
        if line == "spec:":
            lines.append(added)
            at.append(len(lines) - 1)
    return "\n".join(lines) + "\n", at


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("broken", list(BROKEN))
def test_each_document_reports_its_broken_field_at_its_line(
    server: LanguageServer, workspace: Path, setup: str, broken: str
) -> None:
    path, text = _file(workspace, setup)
    added, message = BROKEN[broken]
    text, lines = _under_spec(text, added)
    assert len(lines) == 3
    assert _diagnostics(server.open(path, text)) == [(line, message) for line in lines]


@pytest.mark.parametrize("setup", list(SETUPS))
def test_an_alias_with_every_weight_zero_is_reported(
    server: LanguageServer, workspace: Path, setup: str
) -> None:
    folder = "more" if setup == "a modeline per document" else "aliases"
    text = (workspace / "aliases" / "sentiment.yaml").read_text().replace("weight: 10", "weight: 0")
    text = text.replace("weight: 90", "weight: 0")
    if folder == "aliases":
        text = text.replace(MODELINE, "")
    diagnostics = _diagnostics(server.open(workspace / folder / "alias.yaml", text))
    nodes_line = text.splitlines().index("  nodes:") + 1
    assert diagnostics == [(nodes_line, "expected at least one weight above 0, all are 0")]


def test_a_modeline_at_the_top_covers_the_first_document_only(
    server: LanguageServer, workspace: Path
) -> None:
    text = _three_documents(workspace, modelines=False)
    text, lines = _under_spec(MODELINE + text, "  bogus: true")
    path = workspace / "more" / "top-only.yaml"
    assert _diagnostics(server.open(path, text)) == [(lines[0], "Property bogus is not allowed.")]
    assert server.completion(path, lines[2], 2) == []


# Fields completion must offer under `spec:` in each document (none of them written there yet).
NODE_FIELDS = {"endpoint", "env", "logs", "maintenanceLimit", "suspended", "telemetry", "access"}


@pytest.mark.parametrize("setup", list(SETUPS))
def test_completion_offers_the_fields_in_every_document(
    server: LanguageServer, workspace: Path, setup: str
) -> None:
    path, text = _file(workspace, setup)
    text, lines = _under_spec(text, "  ")
    server.open(path, text)
    for document, line in enumerate(lines):
        items = server.completion(path, line, 2)
        labels = {item["label"] for item in items}
        assert labels >= NODE_FIELDS, (document, labels)
        assert not labels & {"kind", "metadata", "replicas"}, (document, labels)
        described = [item for item in items if item.get("documentation")]
        assert len(described) == len(items), f"document {document}: a field without description"


def test_hover_shows_the_field_description_in_a_later_document(
    server: LanguageServer, workspace: Path
) -> None:
    path, text = _file(workspace, "settings mapping the folder")
    server.open(path, text)
    lines = text.splitlines()
    third = lines.index("  healthCheck: {path: /healthz}")
    assert lines.count("  healthCheck: {path: /healthz}") == 1
    described = NodeSpec.model_fields["health_check"].description
    assert described is not None
    assert described in server.hover(path, third, 4)
    instances = lines.index("  instances: 2")  # the first document's
    described = NodeSpec.model_fields["instances"].description
    assert described is not None
    assert described in server.hover(path, instances, 4)


def _expand(snippet: str) -> str:
    """A snippet as an editor inserts it when each placeholder keeps its default."""
    snippet = re.sub(r"\$\{\d+:([^}]*)\}", r"\1", snippet)
    return re.sub(r"\$\{?\d+\}?", "", snippet)


def test_inserted_field_snippets_validate(server: LanguageServer, workspace: Path) -> None:
    # Each completion under the third document's spec that inserts a value is inserted as an
    # editor would (its lines indented to the cursor's), and the file is loaded as
    # `validate` loads it: the server must report nothing, and the loader accept it.
    path, text = _file(workspace, "a modeline per document")
    text, lines = _under_spec(text, "  ")
    server.open(path, text)
    # Loaded in place of nodes/models.yaml, whose first two documents it holds (the rest kept
    # after it: aliases name them).
    spec_file = workspace / "nodes" / "models.yaml"
    original = spec_file.read_text()
    rest = "".join("---\n" + document for document in original.split("---\n")[2:])
    items = server.completion(path, lines[2], 2)
    inserted = 0
    for item in items:
        snippet = _expand(item["insertText"])
        if snippet.rstrip().endswith(":"):  # a key whose value the user writes
            continue
        body = text.splitlines()
        body[lines[2]] = "  " + snippet.replace("\n", "\n  ")
        candidate = "\n".join(body) + "\n"
        assert _diagnostics(server.open(path, candidate)) == [], (item["label"], snippet)
        spec_file.write_text(candidate + rest)
        try:
            state = load_spec(workspace, read_keys=False)
        finally:
            spec_file.write_text(original)
        assert "echo" in state.nodes, item["label"]
        inserted += 1
    assert inserted >= 5  # instances, minHealthy, maintenanceLimit, endpoint, suspended, ...


def test_an_empty_document_offers_whole_documents_that_validate(
    server: LanguageServer, workspace: Path
) -> None:
    path = workspace / "more" / "new.yaml"
    server.open(path, MODELINE)
    items = {item["label"]: item for item in server.completion(path, 1, 0)}
    assert {"Node (image)", "Node (python)", "Alias", "kind"} <= set(items)
    for label, model in (("Node (image)", NodeDocument), ("Node (python)", NodeDocument)):
        text = MODELINE + _expand(items[label]["insertText"]) + "\n"
        assert _diagnostics(server.open(path, text)) == [], label
        model.model_validate(yaml.safe_load(text))
    text = MODELINE + _expand(items["Alias"]["insertText"]) + "\n"
    assert _diagnostics(server.open(path, text)) == []
    AliasDocument.model_validate(yaml.safe_load(text))


def test_the_readme_settings_check_every_document(tmp_path: Path, workspace: Path) -> None:
    # The README's VS Code settings, as written there, with the schema saved as it says.
    readme = (ROOT / "README.md").read_text()
    editors = readme[readme.index("### Editors") :]
    block = editors[
        editors.index("```json") + len("```json") : editors.index(
            "```", editors.index("```json") + 7
        )
    ]
    vscode = json.loads(block)
    assert "gitops-nodes schema > gitops-nodes.schema.json" in editors
    shutil.copy(ROOT / SCHEMA_FILE, tmp_path / "gitops-nodes.schema.json")
    settings = {key.removeprefix("yaml."): value for key, value in vscode.items()}
    ls = LanguageServer(tmp_path, settings | {"validate": True, "completion": True})
    try:
        text, lines = _under_spec(_three_documents(workspace, modelines=False), "  bogus: true")
        found = _diagnostics(ls.open(tmp_path / "nodes" / "models.yaml", text))
        assert found == [(line, "Property bogus is not allowed.") for line in lines]
        alias = (workspace / "aliases" / "iris.yaml").read_text().replace(MODELINE, "")
        assert _diagnostics(ls.open(tmp_path / "aliases" / "iris.yaml", alias)) == []
        broken = alias.replace("- node: iris", "- node: Iris")
        assert len(ls.open(tmp_path / "aliases" / "iris.yaml", broken)) == 1
    finally:
        ls.close()
