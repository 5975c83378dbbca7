"""Reads a repository's YAML into a validated DesiredState, or raises every problem at once.

Speed matters at scale (thousands of documents), so the happy path uses libyaml's loader
without positions and caches each file's result by its content hash; positions are recovered
only for files that have problems, by composing them again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from balancer.table import Timeouts
from gitops_nodes.gcpause import gc_paused
from gitops_nodes.pynode.config import parse_config
from gitops_nodes.pynode.errors import PyNodeError
from gitops_nodes.spec.access import resolve_access
from gitops_nodes.spec.context import build_tag, context_digest, python_digest
from gitops_nodes.spec.errors import SpecErrors, SpecProblem
from gitops_nodes.spec.hashing import InstanceConfig, canonical_json, spec_hash
from gitops_nodes.spec.models import (
    API_VERSION,
    KINDS,
    PYTHON_PORT,
    SETTINGS_FILE,
    AliasDocument,
    NodeDocument,
    PythonSource,
    Telemetry,
)
from gitops_nodes.spec.state import (
    BuildRequest,
    DesiredAlias,
    DesiredNode,
    DesiredState,
    PythonBuild,
    Source,
)

_MODELS: dict[str, type[NodeDocument] | type[AliasDocument]] = {
    "Node": NodeDocument,
    "Alias": AliasDocument,
}
_Loc = tuple[str | int, ...]

# Errors raised by model validators concern one field; point at it rather than its parent.
_VALIDATOR_FIELD = {
    "dockerfile": "dockerfile",
    "min_healthy": "minHealthy",
    "maintenance_limit": "maintenanceLimit",
    "min_memory": "memory",
    "node_kind": "image",
    "alias_weights": "nodes",
    "alias_nodes": "nodes",
    "rollout_steps": "steps",
    "access_keys": "keys",
    "access_folders": "folders",
    "admin_port": "adminPort",
}


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


# libyaml's C parser is several times faster; PyYAML wheels ship it, source builds may not.
_FastLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_FastLoader):  # type: ignore[valid-type,misc]
    """libyaml's safe loader, refusing duplicate keys (the default keeps the last silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise _DuplicateKey(
                problem=f"duplicate key {key!r}; expected each key once in a mapping",
                problem_mark=key_node.start_mark,
            )
        seen.add(key)
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
StrictLoader = _StrictLoader  # for the settings file (spec/settings.py), read the same way


@dataclass(frozen=True)
class _Entry:
    """One valid document of a file."""

    index: int
    document: NodeDocument | AliasDocument
    node: DesiredNode | None  # resolved once for nodes without a build folder


@dataclass(frozen=True)
class _FileResult:
    sha: str
    entries: tuple[_Entry, ...]
    problems: tuple[SpecProblem, ...]
    ours: bool
    cacheable: bool


class SpecLoader:
    """Loads specs repeatedly, re-reading only the files whose bytes changed since last time."""

    def __init__(self, read_keys: bool = True) -> None:
        self._cache: dict[Path, _FileResult] = {}
        # Without read_keys, private targets' keys are neither read nor required and their
        # access stays None: for commands that only look (status), not publish.
        self.read_keys = read_keys

    def load(self, root: Path) -> DesiredState:
        """The repository's desired state; raises SpecErrors listing every problem found."""
        with gc_paused():
            return self._load(root)

    def _load(self, root: Path) -> DesiredState:
        root = root.resolve()
        if not root.is_dir():
            raise SpecErrors(
                [SpecProblem(str(root), 0, 0, "", "expected a folder holding YAML files")]
            )
        results: dict[str, _FileResult] = {}
        for path in _spec_files(root):
            data = path.read_bytes()
            sha = hashlib.sha1(data).hexdigest()
            cached = self._cache.get(path)
            if cached is None or cached.sha != sha:
                cached = _parse_file(root, path, data, sha)
                if cached.cacheable:
                    self._cache[path] = cached
                else:
                    self._cache.pop(path, None)
            results[path.relative_to(root).as_posix()] = cached
        return _assemble(root, results, self.read_keys)


def load_spec(root: Path, read_keys: bool = True) -> DesiredState:
    """Load a repository once (the CLI's way)."""
    return SpecLoader(read_keys).load(root)


def _spec_files(root: Path) -> list[Path]:
    found = [
        path
        for pattern in ("*.yaml", "*.yml")
        for path in root.rglob(pattern)
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    settings = root / SETTINGS_FILE  # how the repo is deployed, not what: spec/settings.py
    return sorted(path for path in found if path != settings)


def _parse_file(root: Path, path: Path, data: bytes, sha: str) -> _FileResult:
    relative = path.relative_to(root).as_posix()
    try:
        raw_documents = list(yaml.load_all(data, Loader=_StrictLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = f"invalid YAML: {exc.problem}" if exc.problem else "invalid YAML"
        return _FileResult(
            sha, (), (SpecProblem(relative, line, column, "", problem),), True, False
        )
    if not any(_looks_ours(doc) for doc in raw_documents):
        return _FileResult(sha, (), (), False, True)

    entries: list[_Entry] = []
    failures: list[tuple[int, _Loc, str, bool]] = []  # (document, loc, message, at key)
    context = {"root": root, "base": path.parent}
    has_build = False
    for index, raw in enumerate(raw_documents):
        if raw is None:
            continue
        if not isinstance(raw, dict):
            failures.append(
                (index, (), "expected a mapping with apiVersion, kind, metadata and spec", False)
            )
            continue
        kind = raw.get("kind")
        model = _MODELS.get(kind) if isinstance(kind, str) else None
        if model is None:
            expected = " or ".join(KINDS)
            message = (
                f"required field is missing; expected {expected}"
                if "kind" not in raw
                else f"expected {expected}, got {kind!r}"
            )
            failures.append((index, ("kind",), message, False))
            continue
        try:
            document = model.model_validate(raw, context=context)
        except ValidationError as exc:
            failures.extend((index, *_describe(error, model)) for error in exc.errors())
            continue
        node = None
        if isinstance(document, NodeDocument):
            python = document.spec.python
            if python is not None:
                trouble = _check_python(root, python)
                if trouble is not None:
                    failures.append((index, ("spec", "python", "code"), trouble, False))
                    continue
            if python is not None or (document.spec.image and document.spec.image.build):
                has_build = True  # reads other files: never cached by this file's bytes
            else:
                node = _resolve_node(root, document, Source(relative, index))
        entries.append(_Entry(index, document, node))

    problems = _locate(relative, data, failures) if failures else ()
    return _FileResult(sha, tuple(entries), problems, True, not failures and not has_build)


def _looks_ours(raw: object) -> bool:
    if not isinstance(raw, dict):
        return False
    version = raw.get("apiVersion")
    return raw.get("kind") in KINDS or (
        isinstance(version, str) and version.startswith(API_VERSION.split("/")[0] + "/")
    )


def _describe(error: Any, model: type[BaseModel]) -> tuple[_Loc, str, bool]:
    """A pydantic error as (field path, what was expected, whether to point at the key)."""
    loc: _Loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    given = error.get("input")
    if kind in _VALIDATOR_FIELD:
        loc = (*loc, _VALIDATOR_FIELD[kind])
    if loc and loc[-1] == "[key]":
        return loc[:-1], f"invalid key {loc[-2]!r}: {error['msg']}", True
    # Under `access`, what was written is never repeated: it may be a key pasted by mistake.
    shown = not isinstance(given, dict | list) and loc[1:2] != ("access",)
    got = f", got {_show(given)}" if shown else ""
    messages = {
        "missing": "required field is missing",
        "extra_forbidden": f"unknown field; expected one of: {_allowed(model, loc[:-1])}",
        "int_type": f"expected an integer{got}",
        "float_type": f"expected a number{got}",
        "string_type": f"expected a string{got}",
        "bool_type": f"expected true or false{got}",
        "list_type": f"expected a list{got}",
        "dict_type": f"expected a mapping{got}",
        "model_type": f"expected a mapping{got}",
        "model_attributes_type": f"expected a mapping{got}",
        "literal_error": f"expected {ctx.get('expected')}{got}",
        "greater_than_equal": f"expected a value ≥ {ctx.get('ge')}{got}",
        "greater_than": f"expected a value > {ctx.get('gt')}{got}",
        "less_than_equal": f"expected a value ≤ {ctx.get('le')}{got}",
        "finite_number": f"expected a finite number{got}",
        "too_short": f"expected at least {ctx.get('min_length')} item(s)",
        "string_too_short": "expected a non-empty string",
        "string_pattern_mismatch": f"expected a string matching {ctx.get('pattern')}{got}",
    }
    if kind == "env_value":
        read = f", YAML read {_show(given)}" if shown else ""
        messages[kind] = f'expected a string{read}; quote it: {loc[-1]}: "..."'
    message = messages.get(kind)
    if message is None:
        message = f"{error['msg']}{got}" if kind in _CUSTOM_WITH_INPUT else error["msg"]
    return loc, message, kind == "extra_forbidden"


# Custom errors whose message shows what was written (never those of where keys are).
_CUSTOM_WITH_INPUT = {
    "dns_label",
    "duration",
    "duration_range",
    "size",
    "size_range",
    "env_name",
    "image_reference",
    "url_path",
}
describe_error = _describe  # for the settings file's errors


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed(model: type[BaseModel], loc: _Loc) -> str:
    """The field names (as written in YAML) of the model found at loc, for 'unknown field'."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            continue
        field = next(
            (f for name, f in current.model_fields.items() if part in (name, f.alias)), None
        )
        if field is None:
            return "?"
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return ", ".join(f.alias or name for name, f in current.model_fields.items())
    return "?"


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _locate(
    relative: str, data: bytes, failures: Sequence[tuple[int, _Loc, str, bool]]
) -> tuple[SpecProblem, ...]:
    """Positions for failures, found by composing the file again (paid only on bad files)."""
    nodes = list(yaml.compose_all(data, Loader=_FastLoader))
    problems = []
    for index, loc, message, at_key in failures:
        line, column = _position(nodes[index], loc, at_key)
        problems.append(SpecProblem(relative, line, column, _field_path(loc), message))
    return tuple(problems)


locate_problems = _locate  # for the settings file's errors


def _position(node: yaml.Node, loc: _Loc, at_key: bool) -> tuple[int, int]:
    mark = node.start_mark
    for depth, part in enumerate(loc):
        last = depth == len(loc) - 1
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    child = key_node if last and at_key else value_node
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            break  # a missing field: point at the mapping that should hold it
        node, mark = child, child.start_mark
    return mark.line + 1, mark.column + 1


def _field_path(loc: _Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _python_config(python: PythonSource) -> dict[str, Any]:
    """The node.json a python node's image carries (paths as they are inside the image)."""
    config: dict[str, Any] = {
        "code": "code/" + python.code,
        "inputs": python.inputs,
        "outputs": python.outputs,
        "traceback": python.traceback,
    }
    if python.checkpoint is not None:
        config["checkpoint"] = "code/" + python.checkpoint
    if python.setup is not None:
        config["setup"] = "code/" + python.setup
    return config


def _check_python(root: Path, python: PythonSource) -> str | None:
    """What is wrong with a python node's code and variables, checked as its image will:
    an input or output the code never mentions is an error here, not at run time."""
    config = _python_config(python)
    for key in ("code", "checkpoint", "setup"):
        if key in config:
            config[key] = config[key].removeprefix("code/")
    try:
        parse_config(config, root, source=f"python node code {python.code}")
    except PyNodeError as exc:
        return str(exc)
    return None


def _resolve_node(root: Path, document: NodeDocument, source: Source) -> DesiredNode:
    spec = document.spec
    build = None
    if spec.python is not None:
        python = spec.python
        recipe = PythonBuild(
            code=python.code,
            checkpoint=python.checkpoint,
            setup=python.setup,
            packages=tuple(python.packages),
            base_image=python.base_image,
            config=canonical_json(_python_config(python)),
        )
        build = BuildRequest(build_tag(python_digest(root, recipe)), ".", "", recipe)
        reference, port = build.tag, PYTHON_PORT
        command: tuple[str, ...] | None = None  # the image's own: the pynode server
    else:
        image = spec.image
        assert image is not None  # the model allows exactly one of image and python
        if image.build is not None:
            digest = context_digest(root / image.build, image.dockerfile)
            build = BuildRequest(build_tag(digest), image.build, image.dockerfile)
            reference = build.tag
        else:
            reference = image.name or ""
        port = image.port
        command = tuple(image.command) if image.command is not None else None
    config = InstanceConfig(
        image=reference,
        port=port,
        command=command,
        env=tuple(sorted(spec.env.items())),
        cpus=spec.resources.cpus,
        memory=spec.resources.memory,
        telemetry_port=_telemetry_port(spec.telemetry, port),
        logs=(spec.logs.max_size, spec.logs.max_files) if spec.logs is not None else None,
    )
    return DesiredNode(
        name=document.metadata.name,
        config=config,
        spec_hash=spec_hash(config),
        instances=spec.instances,
        min_healthy=spec.min_healthy,
        health_check=spec.health_check,
        build=build,
        source=source,
        timeouts=Timeouts(spec.endpoint.timeout, spec.endpoint.idle_timeout),
        maintenance_limit=spec.maintenance_limit,
        suspended=spec.suspended,
        telemetry_path=spec.telemetry.path if spec.telemetry is not None else None,
        prefix_rewrite=spec.prefix_rewrite,
    )


def _telemetry_port(telemetry: Telemetry | None, port: int) -> int | None:
    """The container port to publish for metrics besides port; None when port serves them."""
    if telemetry is None or telemetry.port is None or telemetry.port == port:
        return None
    return telemetry.port


def _assemble(root: Path, results: dict[str, _FileResult], read_keys: bool) -> DesiredState:
    """Cross-document checks (unique names, aliases naming real nodes), then the state."""
    problems: list[SpecProblem] = [p for result in results.values() for p in result.problems]
    nodes: dict[str, DesiredNode] = {}
    aliases: dict[str, DesiredAlias] = {}
    first_seen: dict[tuple[str, str], Source] = {}
    late: list[tuple[Source, _Loc, str]] = []
    for relative, result in results.items():
        for entry in result.entries:
            document = entry.document
            source = Source(relative, entry.index)
            key = (document.kind, document.metadata.name)
            if key in first_seen:
                other = first_seen[key]
                late.append(
                    (
                        source,
                        ("metadata", "name"),
                        f"expected a name unique among {document.kind}s, "
                        f"{document.metadata.name!r} is also defined in {other.file}",
                    )
                )
                continue
            first_seen[key] = source
            access = None
            if document.spec.access is not None and read_keys:
                # Read on every load, never cached with the file: keys live outside the repo.
                access, trouble = resolve_access(document.spec.access, os.environ)
                late.extend((source, loc, message) for loc, message in trouble)
            if isinstance(document, NodeDocument):
                resolved = entry.node or _resolve_node(root, document, source)
                nodes[document.metadata.name] = (
                    replace(resolved, access=access) if access else resolved
                )
            else:
                aliases[document.metadata.name] = DesiredAlias(
                    name=document.metadata.name,
                    routes=tuple((r.node, r.weight) for r in document.spec.nodes),
                    source=source,
                    affinity_header=(
                        document.spec.session_affinity.header.lower()
                        if document.spec.session_affinity
                        else None
                    ),
                    rollout=document.spec.rollout,
                    access=access,
                    prefix_rewrite=document.spec.prefix_rewrite,
                )
    for alias in aliases.values():
        for position, (node, _) in enumerate(alias.routes):
            if node not in nodes:
                late.append(
                    (
                        alias.source,
                        ("spec", "nodes", position, "node"),
                        f"expected the name of a Node in the spec, there is no Node {node!r}",
                    )
                )
    problems.extend(_locate_late(root, late))
    if problems:
        raise SpecErrors(problems)
    return DesiredState(
        root=root,
        nodes=MappingProxyType(dict(sorted(nodes.items()))),
        aliases=MappingProxyType(dict(sorted(aliases.items()))),
        files=tuple(relative for relative, result in results.items() if result.ours),
    )


def _locate_late(root: Path, late: list[tuple[Source, _Loc, str]]) -> Iterator[SpecProblem]:
    by_file: dict[str, list[tuple[int, _Loc, str, bool]]] = {}
    for source, loc, message in late:
        by_file.setdefault(source.file, []).append((source.document, loc, message, False))
    for relative, failures in by_file.items():
        yield from _locate(relative, (root / relative).read_bytes(), failures)
