"""Model sources in the spec, without servers: what is accepted, what is refused at which
field, and that messages never carry the environment's credentials."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gitops_nodes.sources.resolve import redact
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import load_spec


def problems(tmp_path: Path, python: str) -> list[tuple[str, str]]:
    (tmp_path / "p.py").write_text("y = x\n")
    body = textwrap.indent(textwrap.dedent(python), "    ")
    (tmp_path / "spec.yaml").write_text(
        "apiVersion: gitops-nodes/v1\nkind: Node\nmetadata: {name: n}\nspec:\n  python:\n"
        "    code: p.py\n    inputs: {x: float}\n    outputs: {y: float}\n" + body
    )
    with pytest.raises(SpecErrors) as caught:
        load_spec(tmp_path)
    return [(p.field, p.message) for p in caught.value.problems]


def test_an_https_source_without_sha256_is_refused_at_sha256(tmp_path: Path) -> None:
    found = problems(tmp_path, "checkpoint: {url: 'https://example.com/state.pkl'}\n")
    assert found == [
        (
            "spec.python.checkpoint.sha256",
            "expected a sha256 for an https:// source: what is built in is pinned",
        )
    ]


def test_a_url_with_a_password_is_refused_without_repeating_it(tmp_path: Path) -> None:
    found = problems(tmp_path, "files: {a.bin: 'https://me:hunter22@example.com/a'}\n")
    ((field, message),) = found
    assert (
        field == "spec.python.files.a.bin.url"
        and "credentials come from the environment" in message
    )
    assert "hunter22" not in message


def test_mlflow_needs_exactly_one_of_version_and_alias(tmp_path: Path) -> None:
    found = problems(
        tmp_path, "models: {model: {mlflow: {model: iris, version: 3, alias: champion}}}\n"
    )
    assert found == [
        (
            "spec.python.models.model.mlflow.version",
            "expected exactly one of 'version' (a number) or 'alias'",
        )
    ]


def test_models_take_only_mlflow_sources(tmp_path: Path) -> None:
    ((field, message),) = problems(tmp_path, "models: {model: 's3://bucket/m.pkl'}\n")
    assert field == "spec.python.models" and "only MLflow models load as pyfunc" in message


def test_a_repository_file_under_files_goes_into_the_image(tmp_path: Path) -> None:
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "p.py").write_text("y = x\n")
    (tmp_path / "spec.yaml").write_text(
        "apiVersion: gitops-nodes/v1\nkind: Node\nmetadata: {name: n}\nspec:\n  python:\n"
        "    code: p.py\n    inputs: {x: float}\n    outputs: {y: float}\n"
        "    files: {vocab.json: vocab.json}\n"
    )
    build = load_spec(tmp_path).nodes["n"].build
    assert build is not None and build.python is not None
    (fetched,) = build.python.fetched
    assert fetched.destination == "files/vocab.json"
    assert fetched.path == str(tmp_path / "vocab.json")


def test_messages_lose_the_environments_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-key-value")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123456")
    text = "denied with s3cr3t-key-value at https://user:pw@registry:5000/x and tok-123456"
    assert redact(text) == "denied with *** at https://***@registry:5000/x and ***"
