"""A python node's config: the JSON file the image carries, checked against the node's code.

The file (``/app/node.json`` in images) is an object::

    {
      "code": "predict.py",              # run on every request (required)
      "checkpoint": "state.pkl",         # a pickled dict of variables, loaded once (optional)
      "setup": "setup.py",               # run once at start, after the checkpoint (optional)
      "inputs": {"x": "list[float]"},    # request variables and their types (required)
      "outputs": {"y": "float"},         # response variables and their types (required)
      "traceback": false,                # show user tracebacks in 500 answers (optional)
      "name": "iris", "version": "1",    # the OpenAPI document's title and version (optional)
      "batch": {"maxSize": 64, "maxDelay": 0.002, "numpy": false},  # dynamic batching (optional)
      "allowNonFinite": false,           # NaN and infinities in outputs answered as null (optional)
      "models": {"model": "models/model"}  # MLflow models loaded as pyfunc into variables
    }

Relative paths are read from the config file's folder. Loading compiles the code and the
set-up code once and checks, with `ast`, that the code mentions every input and output
variable (reads it, assigns it, imports or defines it, or declares it global): a variable
the code never names can only be a mistake in the config. Names reached only through
strings (``globals()["x"]``) do not count.
"""

from __future__ import annotations

import ast
import json
import keyword
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any

from gitops_nodes.pynode import types
from gitops_nodes.pynode.errors import ConfigError

KEYS = frozenset(
    {
        "code",
        "checkpoint",
        "setup",
        "inputs",
        "outputs",
        "traceback",
        "name",
        "version",
        "batch",
        "allowNonFinite",
        "models",
    }
)
BATCH_KEYS = frozenset({"maxSize", "maxDelay", "numpy"})
MAX_BATCH_SIZE = 4096
MAX_BATCH_DELAY = 1.0  # seconds


@dataclass(frozen=True)
class Batching:
    """Dynamic batching: the code runs once for up to max_size requests, each input variable
    holding the batch's values (a list, or a numpy array when numpy is set), and a request
    waits at most max_delay seconds for others to join its batch."""

    max_size: int
    max_delay: float
    numpy: bool = False


@dataclass(frozen=True)
class Variable:
    """One selected variable of the node's namespace and its declared type."""

    name: str
    type: types.VarType


@dataclass(frozen=True)
class NodeConfig:
    """Everything static about a node: files, variables, and its compiled code."""

    source: str  # where the config came from, for messages
    code_path: Path
    code: CodeType
    inputs: tuple[Variable, ...]
    outputs: tuple[Variable, ...]
    checkpoint: Path | None = None
    setup_path: Path | None = None
    setup: CodeType | None = None
    traceback: bool = False
    name: str = "python node"
    version: str = "1"
    batch: Batching | None = None  # None: one request, one run of the code
    allow_non_finite: bool = False  # NaN and infinities in outputs are null, not a 500
    models: tuple[tuple[str, Path], ...] = ()  # (variable, MLflow model folder)


def load_config(path: str | Path) -> NodeConfig:
    """Read, check and compile the node config at `path`; ConfigError says what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the node config {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"the node config {path} is not valid JSON: {exc}") from exc
    return parse_config(data, base=path.parent, source=str(path))


def parse_config(data: object, base: Path, source: str = "the node config") -> NodeConfig:
    """Check a decoded config object; relative paths are taken from `base`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a JSON object, got {types.describe(data)}")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"the keys are {', '.join(sorted(KEYS))}"
        )
    code_path = _path(data, "code", base, source, required=True)
    assert code_path is not None
    checkpoint = _path(data, "checkpoint", base, source)
    setup_path = _path(data, "setup", base, source)
    inputs = _variables(data, "inputs", source)
    outputs = _variables(data, "outputs", source)
    show_traceback = data.get("traceback", False)
    if not isinstance(show_traceback, bool):
        raise ConfigError(f"{source}: 'traceback' must be true or false")
    name = _text(data, "name", "python node", source)
    version = _text(data, "version", "1", source)
    batch = _batching(data.get("batch"), source)
    allow_non_finite = data.get("allowNonFinite", False)
    if not isinstance(allow_non_finite, bool):
        raise ConfigError(f"{source}: 'allowNonFinite' must be true or false")

    tree, code = _compile(code_path, "code")
    _check_mentions(tree, code_path, inputs, outputs)
    setup = _compile(setup_path, "set-up code")[1] if setup_path is not None else None
    if checkpoint is not None and not checkpoint.is_file():
        raise ConfigError(f"{source}: the checkpoint file {checkpoint} does not exist")
    models = _models(data, base, source)
    return NodeConfig(
        source=source,
        code_path=code_path,
        code=code,
        inputs=inputs,
        outputs=outputs,
        checkpoint=checkpoint,
        setup_path=setup_path,
        setup=setup,
        traceback=show_traceback,
        name=name,
        version=version,
        batch=batch,
        allow_non_finite=allow_non_finite,
        models=models,
    )


def _batching(value: object, source: str) -> Batching | None:
    """The config's "batch" object, checked; None when the node is not batched."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - BATCH_KEYS or "maxSize" not in value:
        raise ConfigError(
            f"{source}: 'batch' must be an object with maxSize (1 to {MAX_BATCH_SIZE}) and "
            "optionally maxDelay (seconds, 0 to 1) and numpy (true or false)"
        )
    size = value["maxSize"]
    delay = value.get("maxDelay", 0.002)
    numpy = value.get("numpy", False)
    if type(size) is not int or not 1 <= size <= MAX_BATCH_SIZE:
        raise ConfigError(f"{source}: batch.maxSize must be an integer from 1 to {MAX_BATCH_SIZE}")
    if type(delay) not in (int, float) or not 0 <= delay <= MAX_BATCH_DELAY:
        raise ConfigError(f"{source}: batch.maxDelay must be a number of seconds from 0 to 1")
    if not isinstance(numpy, bool):
        raise ConfigError(f"{source}: batch.numpy must be true or false")
    return Batching(size, float(delay), numpy)


def _path(
    data: dict[str, Any], key: str, base: Path, source: str, required: bool = False
) -> Path | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {key!r} must be the path of a file")
    return base / value


def _models(data: dict[str, Any], base: Path, source: str) -> tuple[tuple[str, Path], ...]:
    declared = data.get("models", {})
    if not isinstance(declared, dict) or not all(
        isinstance(k, str) and k.isidentifier() and isinstance(v, str) and v
        for k, v in declared.items()
    ):
        raise ConfigError(f"{source}: 'models' must be an object of {{variable: folder}}")
    return tuple((name, base / folder) for name, folder in declared.items())


def _text(data: dict[str, Any], key: str, default: str, source: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key!r} must be a string")
    return value


def _variables(data: dict[str, Any], key: str, source: str) -> tuple[Variable, ...]:
    declared = data.get(key)
    if not isinstance(declared, dict):
        raise ConfigError(
            f"{source}: {key!r} must be an object of {{variable name: type}}, "
            f'e.g. {{"x": "list[float]"}}'
        )
    variables = []
    for name, type_name in declared.items():
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("__"):
            raise ConfigError(
                f"{source}: {key} variable {name!r} is not a Python variable name "
                "(an identifier, not a keyword, not starting with __)"
            )
        var_type = types.lookup(type_name) if isinstance(type_name, str) else None
        if var_type is None:
            raise ConfigError(
                f"{source}: {key} variable {name!r} has type {type_name!r}; "
                f"the types are {', '.join(types.TYPES)}"
            )
        variables.append(Variable(name, var_type))
    return tuple(variables)


def _compile(path: Path, what: str) -> tuple[ast.Module, CodeType]:
    """Parse and compile a Python file once; its path names it in tracebacks."""
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    try:
        tree = ast.parse(source, filename=str(path))
        return tree, compile(tree, str(path), "exec")
    except SyntaxError as exc:
        where = f"{path}:{exc.lineno}:{exc.offset}" if exc.lineno else str(path)
        raise ConfigError(f"the {what} {where} is not valid Python: {exc.msg}") from exc
    except ValueError as exc:  # e.g. null bytes in the source
        raise ConfigError(f"the {what} {path} is not valid Python: {exc}") from exc
    except (MemoryError, RecursionError) as exc:
        # Python's parser and compiler give up on deep nesting (thousands of levels) this way.
        raise ConfigError(
            f"the {what} {path} is nested too deeply for Python to compile "
            f"({type(exc).__name__}); split its expressions into statements"
        ) from None


def mentioned_names(tree: ast.AST) -> set[str]:
    """Every variable name a piece of code reads, binds, imports, defines or declares."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            names.update(node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.partition(".")[0])
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
    return names


def _check_mentions(
    tree: ast.Module,
    code_path: Path,
    inputs: tuple[Variable, ...],
    outputs: tuple[Variable, ...],
) -> None:
    names = mentioned_names(tree)
    missing = [f"input {v.name!r}" for v in inputs if v.name not in names]
    missing += [f"output {v.name!r}" for v in outputs if v.name not in names]
    if missing:
        raise ConfigError(
            f"the code {code_path} never mentions {', '.join(missing)}: an input must be "
            "read by the code and an output set by it (check the names in the config)"
        )
