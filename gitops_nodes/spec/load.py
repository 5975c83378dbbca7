"""Reads a repository's YAML into a validated DesiredState, or raises every problem at once.

Speed matters at scale (thousands of documents), so the happy path uses libyaml's loader
without positions and caches each file's result by its content hash; positions are recovered
only for files that have problems, by composing them again.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from balancer.table import Timeouts
from gitops_nodes.checkpoint import requirement_warnings, version_warnings
from gitops_nodes.gcpause import gc_paused
from gitops_nodes.notebook import NotebookError, cell_code
from gitops_nodes.pynode.checkpoints import header_of
from gitops_nodes.pynode.config import parse_config
from gitops_nodes.pynode.errors import PyNodeError
from gitops_nodes.sources.cache import file_digest
from gitops_nodes.sources.resolve import Resolved, SourceError
from gitops_nodes.sources.resolve import resolve as resolve_source
from gitops_nodes.spec.access import resolve_access
from gitops_nodes.spec.context import build_tag, context_digest, python_digest
from gitops_nodes.spec.errors import SpecErrors, SpecProblem
from gitops_nodes.spec.hashing import InstanceConfig, canonical_json, spec_hash
from gitops_nodes.spec.models import (
    API_VERSION,
    KINDS,
    PYTHON_PORT,
    SETTINGS_FILE,
    SOURCE_TAGS,
    AliasDocument,
    ModelSource,
    NodeDocument,
    PythonSource,
    Telemetry,
)
from gitops_nodes.spec.repofiles import (
    IGNORE_FILE,
    IgnoreRules,
    ReadError,
    inside,
    read_file,
    walk_yaml,
)
from gitops_nodes.spec.secrets import (
    DigestKey,
    check_secret_files,
    has_secrets,
    resolve_secrets,
)
from gitops_nodes.spec.sops import SopsFiles
from gitops_nodes.spec.state import (
    BuildRequest,
    DesiredAlias,
    DesiredNode,
    DesiredState,
    Fetched,
    PythonBuild,
    Source,
    SourceView,
)
from gitops_nodes.spec.state import (
    IgnoredFile as Ignored,
)
from gitops_nodes.spec.yaml12 import YamlError, parse_documents

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
    "notification_names": "notifications",
    "secret_files": "secretFiles",
    "notification_hmac": "hmacKey",
    "notification_events": "events",
    "python_code": "code",
    "notebook_cell": "cell",
    "python_models": "models",
    "mlflow_version": "version",
    "model_source": "url",
    "source_sha256": "sha256",
}


# libyaml's C parser is several times faster; PyYAML wheels ship it, source builds may not.
# Used only to find positions for problems, in files parse_documents already accepted.
_FastLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The source YAML the cache of parsed files may hold (it holds the parse of each file, about
# ten times as much memory); the least recently used files go first past it.
CACHE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class _Entry:
    """One valid document of a file."""

    index: int
    document: NodeDocument | AliasDocument
    node: DesiredNode | None  # resolved once for nodes without a build folder


@dataclass(frozen=True)
class _FileResult:
    size: int
    entries: tuple[_Entry, ...]
    problems: tuple[SpecProblem, ...]
    ours: bool
    cacheable: bool
    reason: str = ""  # why the file is not ours, when it is not
    # Each document's first line and character index, to find positions in it alone.
    starts: tuple[tuple[int, int], ...] = ()


class SpecLoader:
    """Loads specs repeatedly, re-parsing only files whose path and bytes it has not seen.

    The cache is keyed by each file's path in the repository and the digest of its bytes, not
    by where the repository is on disk: watch checks every commit out into a folder of its
    own, and an unchanged file is a hit there too. It holds the files of the last two loads
    only (a file that changed in every commit would otherwise fill it, commit by commit), and
    at most max_bytes of source YAML (CACHE_BYTES by default), the least recently used files
    leaving first.
    """

    def __init__(
        self,
        read_keys: bool = True,
        max_bytes: int = CACHE_BYTES,
        secret_key: DigestKey | None = None,
    ) -> None:
        self._cache: OrderedDict[tuple[str, str], _FileResult] = OrderedDict()
        self._cached_bytes = 0
        self.max_bytes = max_bytes
        self._used: set[tuple[str, str]] = set()  # keys the load under way read
        self._used_before: set[tuple[str, str]] = set()  # and those the load before it read
        # Without read_keys, private targets' keys and nodes' secrets are neither read nor
        # required (access stays None, secrets empty): for commands that only look (status).
        self.read_keys = read_keys
        # The key secrets' digests are made with: the state directory's (statedir.py), so
        # plan, apply and the labels agree; without one (validate), a key of this run only.
        self.secret_key = secret_key or _ephemeral_key()

    @property
    def cached_bytes(self) -> int:
        """The source bytes of the files whose parse the cache holds now."""
        return self._cached_bytes

    def load(self, root: Path) -> DesiredState:
        """The repository's desired state; raises SpecErrors listing every problem found."""
        with gc_paused():
            try:
                return self._load(root)
            finally:
                self._forget_unused()

    def _forget_unused(self) -> None:
        """Drop the files that neither this load nor the one before it read."""
        keep = self._used | self._used_before
        for key in [key for key in self._cache if key not in keep]:
            self._cached_bytes -= self._cache.pop(key).size
        self._used_before, self._used = self._used, set()

    def _load(self, root: Path) -> DesiredState:
        root = root.resolve()
        if not root.is_dir():
            raise SpecErrors(
                [SpecProblem(str(root), 0, 0, "", "expected a folder holding YAML files")]
            )
        problems: list[SpecProblem] = []
        try:
            rules = IgnoreRules.read(root)
        except ReadError as exc:
            problems.append(exc.as_problem())
            rules = IgnoreRules([])
        walk = walk_yaml(root, rules, skip=frozenset({SETTINGS_FILE, IGNORE_FILE}))
        problems.extend(walk.problems)
        ignored = list(walk.ignored)
        results: dict[str, _FileResult] = {}
        for relative in walk.files:
            try:
                data = read_file(root, relative)
            except ReadError as exc:
                problems.append(exc.as_problem())
                continue
            result = self._parse(root, relative, data)
            if not result.ours:
                ignored.append(Ignored(relative, result.reason))
            results[relative] = result
        return _assemble(
            root,
            results,
            self.read_keys,
            problems,
            tuple(sorted(ignored)),
            self.secret_key,
        )

    def _parse(self, root: Path, relative: str, data: bytes) -> _FileResult:
        key = (relative, hashlib.sha1(data).hexdigest())
        self._used.add(key)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        result = _parse_file(root, relative, data)
        if result.cacheable and result.size <= self.max_bytes:
            self._cache[key] = result
            self._cached_bytes += result.size
            while self._cached_bytes > self.max_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= evicted.size
        return result


def load_spec(
    root: Path, read_keys: bool = True, secret_key: DigestKey | None = None
) -> DesiredState:
    """Load a repository once (the CLI's way)."""
    return SpecLoader(read_keys, secret_key=secret_key).load(root)


def _ephemeral_key() -> DigestKey:
    made: list[bytes] = []

    def key() -> bytes:
        if not made:
            made.append(os.urandom(32))
        return made[0]

    return key


def _parse_file(root: Path, relative: str, data: bytes) -> _FileResult:
    path = root / relative
    starts: list[tuple[int, int]] = []
    try:
        raw_documents = parse_documents(data, starts)
    except YamlError as exc:
        problem = SpecProblem(relative, exc.line, exc.column, "", exc.problem)
        return _FileResult(len(data), (), (problem,), True, False)
    if not any(_looks_ours(doc) for doc in raw_documents):
        return _FileResult(len(data), (), (), False, True, _not_ours(raw_documents))

    entries: list[_Entry] = []
    failures: list[tuple[int, _Loc, str, bool]] = []  # (document, loc, message, at key)
    context = {"root": root, "base": path.parent}
    has_build = False
    for index in range(len(raw_documents)):
        # Each raw document is dropped once validated: a file of 100,000 documents never
        # holds all of them twice over (as parsed and as models) at once.
        raw, raw_documents[index] = raw_documents[index], None
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
        if isinstance(document, NodeDocument):
            python = document.spec.python
            if python is not None:
                trouble = _check_python(root, python)
                if trouble is not None:
                    failures.append((index, ("spec", "python", trouble[0]), trouble[1], False))
                    continue
            if _builds(document):
                has_build = True  # reads other files: never cached by this file's bytes
        entries.append(_Entry(index, document, None))

    if not failures:  # resolved once here and cached; a file with problems is never planned
        entries = [
            replace(entry, node=_resolve_node(root, entry.document, Source(relative, entry.index)))
            if isinstance(entry.document, NodeDocument) and not _builds(entry.document)
            else entry
            for entry in entries
        ]
    problems = _locate(relative, data, failures, starts) if failures else ()
    cacheable = not failures and not has_build
    return _FileResult(len(data), tuple(entries), problems, True, cacheable, "", tuple(starts))


def _builds(document: NodeDocument) -> bool:
    """Whether the node's image is built from files of the repository (read when resolved)."""
    image = document.spec.image
    return document.spec.python is not None or (image is not None and image.build is not None)


def _looks_ours(raw: object) -> bool:
    if not isinstance(raw, dict):
        return False
    version = raw.get("apiVersion")
    return raw.get("kind") in KINDS or (
        isinstance(version, str) and version.startswith(API_VERSION.split("/")[0] + "/")
    )


def _not_ours(documents: list[Any]) -> str:
    """Why a file whose documents are none of ours is left out, as plan shows it."""
    written = [doc for doc in documents if doc is not None]
    if not written:
        return "empty: no documents"
    first = written[0]
    if isinstance(first, list):
        return "a list, not gitops-nodes documents (mappings with kind: Node or Alias)"
    if not isinstance(first, dict):
        return "a scalar, not gitops-nodes documents (mappings with kind: Node or Alias)"
    kind, version = first.get("kind"), first.get("apiVersion")
    if isinstance(first.get("sops"), dict) and "kind" not in first:
        return "a SOPS-encrypted file (a secrets file for fromSecret, not spec)"
    if "kind" in first and "apiVersion" not in first:
        return f"kind {_show(kind)} is neither Node nor Alias, and no apiVersion: {API_VERSION}"
    if "apiVersion" in first:
        return f"apiVersion {_show(version)} is not {API_VERSION}, kind {_show(kind)}"
    return f"not gitops-nodes documents: no kind: Node or Alias, no apiVersion: {API_VERSION}"


def _describe(error: Any, model: type[BaseModel]) -> tuple[_Loc, str, bool]:
    """A pydantic error as (field path, what was expected, whether to point at the key)."""
    # The union tags pydantic puts in error locations (a repo file's or a model source's kind,
    # an env entry's shape) name no field.
    loc: _Loc = tuple(part for part in error["loc"] if part not in SOURCE_TAGS)
    if loc[1:2] == ("env",) and len(loc) > 3 and loc[3] in ("literal", "secret"):
        loc = loc[:3] + loc[4:]
    kind = error["type"]
    ctx = error.get("ctx") or {}
    given = error.get("input")
    if kind in _VALIDATOR_FIELD:
        loc = (*loc, _VALIDATOR_FIELD[kind])
    if loc and loc[-1] == "[key]":
        return _describe_key(loc[:-1], kind, error["msg"], given)
    # Under `access`, what was written is never repeated: it may be a key pasted by mistake.
    # Nor under `notifications`: a webhook URL written out may be a secret one.
    shown = (
        not isinstance(given, dict | list)
        and loc[1:2] != ("access",)
        and loc[:1] != ("notifications",)
    )
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


def _describe_key(loc: _Loc, kind: str, text: str, key: object) -> tuple[_Loc, str, bool]:
    """A mapping key that is refused (loc ends with it, as pydantic writes it), pointed at."""
    expected = "expected a string" if kind == "string_type" else text
    if isinstance(key, str):
        return loc, f"invalid key {key!r}: {expected}", True
    # YAML read the key as a number, a boolean or null, which pydantic's location shows as
    # 1, 'None' or '1.5' (true as 1): the problem is the mapping's, at its key, and the key
    # is shown as it was written.
    written = "null" if key is None else str(key).lower() if isinstance(key, bool) else _show(key)
    return loc[:-1], f"the key {written} is not a name: {expected}", True


# Custom errors whose message shows what was written (never those of where keys are).
_CUSTOM_WITH_INPUT = {
    "dns_label",
    "duration",
    "duration_range",
    "size",
    "size_range",
    "env_name",
    "image_reference",
    "registry",
    "url_path",
    "file_name",  # (never source_url's: a URL may hold a password written by mistake)
}
describe_error = _describe  # for the settings file's errors


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed(model: type[BaseModel], loc: _Loc) -> str:
    """The field names (as written in YAML) of the model found at loc, for 'unknown field'."""
    current: Any = model
    keyed = False  # the part after a mapping field (env, secretFiles) is a key, not a field
    for part in loc:
        if (
            keyed
            or isinstance(part, int)
            or not (isinstance(current, type) and issubclass(current, BaseModel))
        ):
            keyed = False
            continue
        field = next(
            (f for name, f in current.model_fields.items() if part in (name, f.alias)), None
        )
        if field is None:
            return "?"
        keyed = get_origin(field.annotation) is dict
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
    relative: str,
    data: bytes,
    failures: Sequence[tuple[int, _Loc, str, bool]],
    starts: Sequence[tuple[int, int]] = (),
) -> tuple[SpecProblem, ...]:
    """Positions for failures, found by composing the failing documents again (paid only on
    bad files, and only for their bad documents when starts gives where each one begins)."""
    lines: list[str] | None = None
    composed: dict[int, tuple[yaml.Node, int] | None] = {}
    everything: list[yaml.Node] | None = None
    problems = []
    for index, loc, message, at_key in failures:
        if index not in composed:
            if starts and lines is None and not data.isascii():
                lines = _lines(data)
            found = _compose_one(data, lines, starts, index) if starts else None
            if found is None:
                if everything is None:
                    everything = _compose_all(data) or []
                found = (everything[index], 0) if index < len(everything) else None
            composed[index] = found
        found = composed[index]
        if found is None:
            # Not composed again (it should never happen to a file the loader accepted): the
            # problem is still reported, at its document's first line when that is known.
            line = starts[index][0] + 1 if index < len(starts) else 0
            problems.append(
                SpecProblem(relative, line, 1 if line else 0, _field_path(loc), message)
            )
            continue
        node, offset = found
        line, column = _position(node, loc, at_key)
        problems.append(SpecProblem(relative, line + offset, column, _field_path(loc), message))
    return tuple(problems)


class _AnchorsRedefinedLoader(yaml.SafeLoader):
    """Composes as the loader parses (yaml12.py): an anchor defined again names the later
    node from there on, where PyYAML's composer refuses the file ("found duplicate anchor")."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if not self.check_event(yaml.AliasEvent):
            anchor = getattr(self.peek_event(), "anchor", None)  # type: ignore[no-untyped-call]
            if anchor is not None:
                self.anchors.pop(anchor, None)
        return super().compose_node(parent, index)


def _compose_all(text: str | bytes, first: bool = False) -> list[yaml.Node] | None:
    """Every document's node of text (first: only the first one's), None when PyYAML cannot
    compose it: a file the loader accepted composes, but a position is never worth a crash."""
    for loader in (_FastLoader, _AnchorsRedefinedLoader):
        try:
            documents = yaml.compose_all(text, Loader=loader)
            return list(itertools.islice(documents, 1) if first else documents)
        except yaml.composer.ComposerError:  # a re-defined anchor, which libyaml refuses
            continue
        except yaml.YAMLError:
            return None
    return None


def _lines(data: bytes) -> list[str]:
    """The file's lines as libyaml counts them ([] when it is not UTF-8: composed whole).
    Text that parsed has no other breaks than those str.splitlines knows."""
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return []


def _compose_one(
    data: bytes, lines: list[str] | None, starts: Sequence[tuple[int, int]], index: int
) -> tuple[yaml.Node, int] | None:
    """Document index composed from its own text, and the line it starts at. In ASCII
    (most files) character indexes are byte offsets; otherwise the text is cut by lines."""
    if index >= len(starts):
        return None
    line, begin = starts[index]
    text: str | bytes
    if lines is None:
        end = starts[index + 1][1] if index + 1 < len(starts) else len(data)
        # From its line's start; a lone CR ends a line too (old Mac files), as YAML counts.
        text = data[max(data.rfind(b"\n", 0, begin), data.rfind(b"\r", 0, begin)) + 1 : end]
    elif lines:
        end = starts[index + 1][0] if index + 1 < len(starts) else len(lines)
        text = "".join(lines[line : end + 1])  # the next `---` line too: harmless
    else:
        return None
    # None: a slice that does not stand alone (a directive before it): compose all.
    nodes = _compose_all(text, first=True)
    return (nodes[0], line) if nodes else None


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


def _python_config(
    python: PythonSource, code: str, checkpoint: str | None, models: dict[str, str]
) -> dict[str, Any]:
    """The node.json a python node's image carries (paths as they are inside /app)."""
    config: dict[str, Any] = {
        "code": code,
        "inputs": python.inputs,
        "outputs": python.outputs,
        "traceback": python.traceback,
    }
    if checkpoint is not None:
        config["checkpoint"] = checkpoint
    if python.setup is not None:
        config["setup"] = "code/" + python.setup
    # Written only when set, so a node without them keeps its image tag (and instances).
    if python.batch is not None:
        config["batch"] = {
            "maxSize": python.batch.max_size,
            "maxDelay": python.batch.max_delay,
            "numpy": python.batch.numpy,
        }
    if python.allow_non_finite:
        config["allowNonFinite"] = True
    if models:
        config["models"] = models
    return config


def _code_name(python: PythonSource) -> str:
    """The request code's path in the repository, or for a notebook's cell a name beside it."""
    if python.notebook is not None:
        return f"{python.notebook}.{python.cell}.py"
    assert python.code is not None  # the model requires code or notebook
    return python.code


def _cell_code(root: Path, python: PythonSource) -> str | None:
    """A notebook node's request code (NotebookError when the cell is not there)."""
    if python.notebook is None or python.cell is None:
        return None
    return cell_code(root / python.notebook, python.cell, python.notebook)


def _check_python(root: Path, python: PythonSource) -> tuple[str, str] | None:
    """(field, what is wrong) with a python node's code and variables, checked as its image
    will: an input or output the code never mentions is an error here, not at run time."""
    try:
        text = _cell_code(root, python)
    except NotebookError as exc:
        return "cell", str(exc)
    checkpoint = python.checkpoint if isinstance(python.checkpoint, str) else None
    with tempfile.TemporaryDirectory() as scratch:
        code = python.code or ""
        if text is not None:
            code = str(Path(scratch) / Path(_code_name(python)).name)
            Path(code).write_text(text)
        config = _python_config(python, code, checkpoint, {})
        if python.setup is not None:
            config["setup"] = python.setup
        shown = python.code or f"cell {python.cell!r} of {python.notebook}"
        try:
            parse_config(config, root, source=f"python node code {shown}")
        except PyNodeError as exc:
            return ("cell" if text is not None else "code"), str(exc).replace(code, shown)
    return None


SOURCE_PROBLEM = "cannot fetch"  # starts the message of a source that could not be fetched


class _SourceProblem(Exception):
    """A node's source that could not be resolved: the field and what went wrong."""

    def __init__(self, loc: _Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def _python_build(
    root: Path, name: str, python: PythonSource
) -> tuple[PythonBuild, tuple[SourceView, ...], tuple[str, ...]]:
    """A python node's image recipe, with its sources fetched (or found in the cache), what
    they resolved to, and how the versions they were made with differ from the image's."""
    fetched: list[Fetched] = []
    views: list[SourceView] = []
    warnings: list[str] = []
    packages = tuple(python.packages)

    def resolve(source: ModelSource, loc: _Loc, shown: str) -> Resolved:
        try:
            resolved = resolve_source(source, shown)
        except SourceError as exc:
            raise _SourceProblem(
                ("spec", "python", *loc),
                f"node {name}: {SOURCE_PROBLEM} {shown}: {exc}; nothing was applied",
            ) from None
        views.append(SourceView(shown, resolved.shown, resolved.resolved, resolved.fetched))
        for warning in requirement_warnings(resolved.requirements, packages):
            warnings.append(f"node {name}: {shown} {source.shown()} was {warning}")
        return resolved

    checkpoint: str | None = None
    header_path: Path | None = None
    if isinstance(python.checkpoint, ModelSource):
        resolved = resolve(python.checkpoint, ("checkpoint",), "checkpoint")
        checkpoint = "sources/checkpoint"
        fetched.append(Fetched(checkpoint, str(resolved.entry.path), resolved.entry.digest))
        header_path = resolved.entry.path
    elif python.checkpoint is not None:
        checkpoint = "code/" + python.checkpoint
        header_path = inside(root, python.checkpoint)
    if header_path is not None:
        for warning in version_warnings(header_of(str(header_path)), packages):
            warnings.append(f"node {name}: its checkpoint was {warning}")
    for file_name, file_source in sorted(python.files.items()):
        destination = f"files/{file_name}"
        if isinstance(file_source, ModelSource):
            got = resolve(file_source, ("files", file_name), f"files.{file_name}")
            entry = got.entry
            fetched.append(Fetched(destination, str(entry.path), entry.digest, entry.tree))
        else:
            path = inside(root, file_source)
            fetched.append(Fetched(destination, str(path), file_digest(path)[0]))
    models: dict[str, str] = {}
    for variable, model_source in sorted(python.models.items()):
        got = resolve(model_source, ("models", variable), f"models.{variable}")
        models[variable] = f"models/{variable}"
        fetched.append(Fetched(models[variable], str(got.entry.path), got.entry.digest, True))
    code = _code_name(python)
    try:
        text = _cell_code(root, python)
    except NotebookError as exc:
        raise _SourceProblem(("spec", "python", "cell"), str(exc)) from None
    recipe = PythonBuild(
        code=code,
        checkpoint=python.checkpoint if isinstance(python.checkpoint, str) else None,
        setup=python.setup,
        packages=packages,
        base_image=python.base_image,
        config=canonical_json(_python_config(python, "code/" + code, checkpoint, models)),
        code_text=text,
        fetched=tuple(fetched),
    )
    return recipe, tuple(views), tuple(warnings)


def _resolve_node(root: Path, document: NodeDocument, source: Source) -> DesiredNode:
    spec = document.spec
    build = None
    views: tuple[SourceView, ...] = ()
    warnings: tuple[str, ...] = ()
    if spec.python is not None:
        recipe, views, warnings = _python_build(root, document.metadata.name, spec.python)
        build = BuildRequest(build_tag(python_digest(root, recipe)), ".", "", recipe)
        reference, port = build.tag, PYTHON_PORT
        command: tuple[str, ...] | None = None  # the image's own: the pynode server
    else:
        image = spec.image
        assert image is not None  # the model allows exactly one of image and python
        if image.build is not None:
            digest = context_digest(root / image.build, image.dockerfile, image.build)
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
        # Secrets' keyed digests are added on every load (_assemble): they are never cached.
        env=tuple(sorted((k, v) for k, v in spec.env.items() if isinstance(v, str))),
        cpus=spec.resources.cpus,
        memory=spec.resources.memory,
        gpus=spec.resources.gpus,
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
        sources=views,
        warnings=warnings,
    )


def _telemetry_port(telemetry: Telemetry | None, port: int) -> int | None:
    """The container port to publish for metrics besides port; None when port serves them."""
    if telemetry is None or telemetry.port is None or telemetry.port == port:
        return None
    return telemetry.port


def _assemble(
    root: Path,
    results: dict[str, _FileResult],
    read_keys: bool,
    problems: list[SpecProblem],
    ignored: tuple[Ignored, ...],
    secret_key: DigestKey | None = None,
) -> DesiredState:
    """Cross-document checks (unique names, aliases naming real nodes), then the state."""
    problems.extend(p for result in results.values() for p in result.problems)
    # With problems already found nothing is planned: nodes whose resolving reads no files
    # are not resolved, so one error among 100,000 documents costs less than none.
    doomed = bool(problems)
    node_names: set[str] = set()
    nodes: dict[str, DesiredNode] = {}
    aliases: dict[str, DesiredAlias] = {}
    first_seen: dict[tuple[str, str], Source] = {}
    late: list[tuple[Source, _Loc, str]] = []
    sops = SopsFiles(root, os.environ)  # each secrets file decrypted once per load
    digest_key = secret_key or _ephemeral_key()
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
                node_names.add(document.metadata.name)
                if doomed and entry.node is None and not _builds(document):
                    continue  # the load fails anyway: what is left to find needs only names
                try:
                    resolved = entry.node or _resolve_node(root, document, source)
                except ReadError as exc:  # a file of its build folder or python code
                    late.append((source, _build_field(document), exc.message_in_repo()))
                    continue
                except _SourceProblem as exc:  # a model source not found, denied, ...
                    late.append((source, exc.loc, exc.message))
                    continue
                if read_keys and has_secrets(document.spec):
                    # Read on every load, never cached with the file, like access keys.
                    secrets, trouble = resolve_secrets(document.spec, os.environ, sops, digest_key)
                    late.extend((source, loc, message) for loc, message in trouble)
                    if secrets is None:
                        continue
                    config = replace(
                        resolved.config,
                        secret_env=secrets.env_digests,
                        secret_files=secrets.file_digests,
                    )
                    resolved = replace(
                        resolved,
                        config=config,
                        spec_hash=spec_hash(config),
                        secrets=secrets.values,
                    )
                elif has_secrets(document.spec):  # no keys here (CI): what needs none
                    trouble = check_secret_files(document.spec, sops)
                    late.extend((source, loc, message) for loc, message in trouble)
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
            if node not in node_names:
                late.append(
                    (
                        alias.source,
                        ("spec", "nodes", position, "node"),
                        f"expected the name of a Node in the spec, there is no Node {node!r}",
                    )
                )
    starts = {relative: result.starts for relative, result in results.items()}
    problems.extend(_locate_late(root, late, starts))
    if problems:
        raise SpecErrors(problems)
    return DesiredState(
        root=root,
        nodes=MappingProxyType(dict(sorted(nodes.items()))),
        aliases=MappingProxyType(dict(sorted(aliases.items()))),
        files=tuple(relative for relative, result in results.items() if result.ours),
        ignored=ignored,
    )


def _build_field(document: NodeDocument) -> _Loc:
    """The field that names what a node's image is built from."""
    if document.spec.python is not None:
        return ("spec", "python", "code" if document.spec.python.code else "notebook")
    return ("spec", "image", "build")


def _locate_late(
    root: Path,
    late: list[tuple[Source, _Loc, str]],
    starts: dict[str, tuple[tuple[int, int], ...]],
) -> Iterator[SpecProblem]:
    by_file: dict[str, list[tuple[int, _Loc, str, bool]]] = {}
    for source, loc, message in late:
        by_file.setdefault(source.file, []).append((source.document, loc, message, False))
    for relative, failures in by_file.items():
        try:
            data = read_file(root, relative)
        except ReadError as exc:  # changed under us since it was parsed
            yield exc.as_problem()
            continue
        yield from _locate(relative, data, failures, starts.get(relative, ()))
