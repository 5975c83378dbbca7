"""An MLflow registry model fetched: its version (an alias looked up now), and its artifacts.

The registry is MLFLOW_TRACKING_URI's (MLFLOW_REGISTRY_URI when set); credentials come
from MLflow's own environment variables. A version's artifacts never change, so a version
already in the cache is not downloaded again: only the alias lookup asks the registry.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from gitops_nodes.sources.cache import Cache
from gitops_nodes.sources.resolve import Resolved, SourceError, describe, shown_uri
from gitops_nodes.spec.models import MlflowModel

# MLflow retries an unreachable server for minutes by default; a plan should say so sooner.
_QUICK = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_REGISTRY_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise SourceError("MLFLOW_TRACKING_URI is not set: it names the MLflow registry")
    return uri


def fetch_mlflow(model: MlflowModel, field: str, cache: Cache) -> Resolved:
    """The model version's artifacts in the cache, and what plans show of it."""
    uri = tracking_uri()
    for name, value in _QUICK.items():
        os.environ.setdefault(name, value)
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise SourceError(
            f"{model.uri()}: MLflow sources need the mlflow-skinny package where "
            "gitops-nodes runs (pip install 'gitops-nodes[models]')"
        ) from None
    registry = shown_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if model.alias is not None:
            version = client.get_model_version_by_alias(model.model, model.alias)
        else:
            version = client.get_model_version(model.model, str(model.version))
    except MlflowException as exc:
        raise SourceError(f"{model.uri()} at {registry}: {_problem(exc)}") from None
    number = str(version.version)
    identity = "\0".join(["mlflow", uri, model.model, number, str(version.source)])
    entry = cache.lookup(identity)
    fetched = entry is None
    if entry is None:
        scratch = cache.scratch()
        try:
            folder = _download(client, model.model, number, scratch, registry)
            entry = cache.add_tree(folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        cache.remember(identity, entry)
    resolved = f"version {number}, {describe(entry)}"
    return Resolved(field, model.uri(), resolved, entry, fetched, requirements(entry.path))


def _download(client: Any, name: str, version: str, scratch: Path, registry: str) -> Path:
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    target = scratch / "artifacts"
    target.mkdir()
    try:
        download_artifacts(
            artifact_uri=f"models:/{name}/{version}",
            dst_path=str(target),
            tracking_uri=client.tracking_uri,
        )
    except MlflowException as exc:
        raise SourceError(f"models:/{name}/{version} at {registry}: {_problem(exc)}") from None
    except OSError as exc:
        raise SourceError(f"models:/{name}/{version} at {registry}: {exc}") from None
    return target


def _problem(exc: Any) -> str:
    code = str(getattr(exc, "error_code", ""))
    text = str(exc)
    if code == "RESOURCE_DOES_NOT_EXIST" or "not found" in text.lower():
        return "not found in the registry"
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or " 401" in text or " 403" in text:
        return "access denied: check MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN"
    if "Max retries" in text or "Connection" in text or "API request" in text:
        return "registry unreachable"
    first = text.strip().splitlines()[0] if text.strip() else code
    return first[:300]


def requirements(folder: Path) -> tuple[str, ...]:
    """The pinned requirements the model was logged with (its requirements.txt)."""
    try:
        lines = (folder / "requirements.txt").read_text().splitlines()
    except OSError:
        return ()
    return tuple(line.strip() for line in lines if "==" in line and not line.startswith("#"))
