"""A prepared python node: its interpreter state, and one call of its code on a request.

`prepare` builds the namespace once: the checkpoint's variables, then the set-up code run in
it. `Node.run` then takes a request body and gives back a status and a JSON body; it is the
whole per-request work apart from HTTP. The namespace is shared state that every request
reads and may change (a counter, an online model), so calls must never overlap: the server
runs them one at a time on its single thread.

Checkpoints are read with the standard library's pickle. A checkpoint written by cloudpickle
(which saves functions and classes defined in a notebook by value) loads with plain pickle
as long as cloudpickle itself is importable in the image; so are the modules of the objects
it holds (scikit-learn for a scikit-learn model). Unpickling runs code from the file: a
checkpoint is trusted like the node's code is. The code and the set-up code run as module
`__main__` (its globals are the namespace), as they did in the notebook that made them.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from gitops_nodes.pynode.checkpoints import read_header
from gitops_nodes.pynode.codec import (
    DECODE_ERRORS,
    ENCODE_ERRORS,
    Codec,
    NonFiniteConstant,
    default_codec,
)
from gitops_nodes.pynode.config import NodeConfig, Variable
from gitops_nodes.pynode.errors import PrepareError
from gitops_nodes.pynode.types import (
    INVALID,
    describe,
    finite_or_null,
    non_finite,
    plain,
    problem,
)

MAX_BYTES = 16 * 2**20  # the largest request body and response body, as on the platform


class Node:
    """One instance's interpreter state and the compiled code that answers its requests."""

    __slots__ = (
        "allow_non_finite",
        "as_array",
        "checks",
        "code",
        "config",
        "dumps",
        "input_count",
        "loads",
        "max_response",
        "namespace",
        "output_checks",
        "output_names",
    )

    def __init__(
        self,
        config: NodeConfig,
        namespace: dict[str, Any],
        codec: Codec | None = None,
        max_response: int = MAX_BYTES,
    ) -> None:
        codec = codec or default_codec()
        self.config = config
        self.namespace = namespace
        self.code = config.code
        self.loads = codec.loads
        self.dumps = codec.dumps
        # Compiled once: (name, check) pairs; a check of None lets any value through.
        self.checks = tuple((v.name, v.type.check) for v in config.inputs)
        self.input_count = len(config.inputs)
        self.output_names = tuple(v.name for v in config.outputs)
        self.output_checks = tuple(
            (v.name, v.type.check) for v in config.outputs if v.type.check is not None
        )
        self.max_response = max_response
        self.allow_non_finite = config.allow_non_finite
        # A batched node that asked for numpy arrays: numpy.asarray, imported once here.
        self.as_array: Callable[[list[Any]], Any] | None = None
        if config.batch is not None and config.batch.numpy:
            self.as_array = _numpy_asarray()

    def run(self, body: bytes) -> tuple[int, bytes]:
        """Check the inputs in `body`, run the code, and answer (status, JSON of outputs).

        Never raises for anything a request or the user's code does: bad input is 400/422,
        a failure of the code or of its outputs is 500 (an output must have its declared
        type, numpy's values counting as the Python ones they stand for), and the namespace
        stays as the code left it. An empty body stands for `{}` (a node without inputs).
        """
        checked = self.inputs(body)
        if isinstance(checked, tuple):
            return checked
        namespace = self.namespace
        namespace.update(checked)
        try:
            exec(self.code, namespace)
        except (Exception, SystemExit) as exc:
            return 500, self.user_error(exc)
        outputs = {}
        try:
            for name in self.output_names:  # a loop is cheaper than a comprehension in 3.11
                outputs[name] = namespace[name]
        except KeyError:
            return 500, self.missing_outputs()
        return self.answer(outputs)

    def run_batch(self, bodies: list[bytes]) -> list[tuple[int, bytes]]:
        """Answer a batch of requests with one run of the code (a node with `batch`).

        Each request's inputs are checked alone (a bad one is answered 400/422 and left out);
        the others' values go into the input variables as lists (or numpy arrays), in the
        order of `bodies`. The code must set each output to a list (a tuple or array counts)
        with one value per request run, each answered its own. An exception, or an output
        that is not such a list, fails every request of the run with the same 500.
        """
        answers: list[tuple[int, bytes]] = [(0, b"")] * len(bodies)
        rows: list[int] = []
        columns: dict[str, list[Any]] = {name: [] for name, _ in self.checks}
        for index, body in enumerate(bodies):
            checked = self.inputs(body)
            if isinstance(checked, tuple):
                answers[index] = checked
                continue
            rows.append(index)
            for name, values in columns.items():
                values.append(checked[name])
        count = len(rows)
        if not count:
            return answers
        namespace = self.namespace
        if self.as_array is not None:
            namespace.update({name: self.as_array(v) for name, v in columns.items()})
        else:
            namespace.update(columns)
        failed: tuple[int, bytes] | None = None
        outputs: dict[str, list[Any]] = {}
        try:
            exec(self.code, namespace)
        except (Exception, SystemExit) as exc:
            failed = 500, self.user_error(exc)
        else:
            try:
                for name in self.output_names:
                    outputs[name] = namespace[name]
            except KeyError:
                failed = 500, self.missing_outputs()
            else:
                for name, value in outputs.items():
                    column = _column(value)
                    if column is None or len(column) != count:
                        failed = 500, self.not_a_column(name, value, count)
                        break
                    outputs[name] = column
        for position, index in enumerate(rows):
            if failed is not None:
                answers[index] = failed
            else:
                answers[index] = self.answer({n: c[position] for n, c in outputs.items()})
        return answers

    def inputs(self, body: bytes) -> dict[str, Any] | tuple[int, bytes]:
        """One request's checked inputs, or its 400/422 answer (for `run` and `run_batch`)."""
        if body:
            try:
                data = self.loads(body)
            except DECODE_ERRORS as exc:
                return 400, self.not_json(exc)
            if type(data) is not dict:
                return 422, self.not_an_object(data)
        else:
            data = {}
        for name, check in self.checks:
            value = data.get(name, INVALID)
            if value is INVALID:
                return 422, self.invalid_inputs(data)
            if check is not None:
                checked = check(value)
                if checked is not value:
                    if checked is INVALID:
                        return 422, self.invalid_inputs(data)
                    data[name] = checked  # ints given for floats, stored as floats
        if len(data) != self.input_count:
            return 422, self.invalid_inputs(data)  # an unknown field
        return data

    def answer(self, outputs: dict[str, Any]) -> tuple[int, bytes]:
        """One request's answer from its output values, checked (for `run` and `run_batch`)."""
        for name, check in self.output_checks:
            value = outputs[name]
            checked = check(value)
            if checked is not value:
                if checked is INVALID:
                    checked = check(plain(value))  # numpy values, tuples: the slow path
                    if checked is INVALID:
                        return 500, self.invalid_output(name, value)
                outputs[name] = checked
        try:
            payload = self.dumps(outputs)
        except ENCODE_ERRORS as exc:
            return self.unencodable(outputs, exc)
        # orjson writes NaN and the infinities as null: a null in the answer is looked into
        # (a scan of its bytes, cheaper than walking every output on every request).
        if b"null" in payload and not self.allow_non_finite:
            refused = self.non_finite(outputs)
            if refused is not None:
                return 500, refused
        if len(payload) > self.max_response:
            return 500, self.too_large(payload)
        return 200, payload

    # -- the slow paths: only requests that fail come here --------------------------------

    def error(self, name: str, message: str, **extra: object) -> bytes:
        """An error body: {"error_name", "error_message", ...extra}."""
        return self.dumps({"error_name": name, "error_message": message, **extra})

    def not_an_object(self, data: object) -> bytes:
        expected = "a JSON object of the input variables"
        return self.error(
            "InvalidInput",
            f"the request body must be {expected} ({self.signature()}), got {describe(data)}",
            errors=[{"field": None, "expected": expected, "problem": f"got {describe(data)}"}],
        )

    def invalid_inputs(self, data: dict[str, Any]) -> bytes:
        """422 body naming every missing, mistyped and unknown field."""
        errors: list[dict[str, str]] = []
        messages: list[str] = []
        declared = {v.name: v for v in self.config.inputs}
        for variable in declared.values():
            var_type = variable.type
            value = data.get(variable.name, INVALID)
            if value is INVALID:
                reason = "missing"
                messages.append(f"input {variable.name!r} is missing: expected {var_type.expected}")
            elif var_type.check is not None and var_type.check(value) is INVALID:
                reason = problem(var_type, value)
                messages.append(f"input {variable.name!r}: expected {var_type.expected}, {reason}")
            else:
                continue
            errors.append({"field": variable.name, "expected": var_type.name, "problem": reason})
        names = ", ".join(declared) or "none"
        for field in data:
            if field not in declared:
                messages.append(f"{field!r} is not an input of this node (its inputs: {names})")
                errors.append(
                    {"field": field, "expected": f"one of: {names}", "problem": "unknown input"}
                )
        return self.error("InvalidInput", "; ".join(messages), errors=errors)

    def user_error(self, exc: BaseException) -> bytes:
        """500 body for an exception raised by the node's code."""
        extra: dict[str, object] = {}
        if self.config.traceback:
            extra["traceback"] = traceback_lines(exc, skip=1)  # from the code's own frame
        return self.error(type(exc).__name__, _message(exc), **extra)

    def missing_outputs(self) -> bytes:
        missing = [name for name in self.output_names if name not in self.namespace]
        return self.error(
            "MissingOutput",
            f"the code {self.config.code_path} ran but did not set the output variable(s) "
            f"{', '.join(map(repr, missing))}",
        )

    def invalid_output(self, name: str, value: object) -> bytes:
        """500 body for an output whose value does not have its declared type."""
        declared = next(v.type for v in self.config.outputs if v.name == name)
        return self.error(
            "InvalidOutput",
            f"output {name!r}: expected {declared.expected}, {problem(declared, plain(value))} "
            f"(the code {self.config.code_path} set it; the API promises the declared type)",
        )

    def unencodable(self, outputs: dict[str, Any], exc: Exception) -> tuple[int, bytes]:
        """The answer when the encoder refused the outputs (the standard library's refuses
        NaN and the infinities, which are null when the node allows them)."""
        if self.allow_non_finite:
            try:
                return 200, self.dumps(finite_or_null(outputs))
            except ENCODE_ERRORS:
                pass
        else:
            refused = self.non_finite(outputs)
            if refused is not None:
                return 500, refused
        culprit = next((n for n in outputs if not _encodes(self, outputs[n])), None)
        what = f"output {culprit!r}" if culprit else "the outputs"
        return 500, self.error(
            "InvalidOutput",
            f"{what} cannot be encoded as JSON: {type(exc).__name__}: {_message(exc)}",
        )

    def non_finite(self, outputs: dict[str, Any]) -> bytes | None:
        """500 body naming the first output that holds a NaN or an infinity, or None."""
        for name, value in outputs.items():
            where = non_finite(value)
            if where is not None:
                inside = f" ({where})" if where else ""
                return self.error(
                    "InvalidOutput",
                    f"output {name!r}{inside} is {_non_finite_word(value, where)}, which JSON "
                    f"cannot carry (the code {self.config.code_path} set it; set "
                    "python.allowNonFinite to answer such values as null)",
                )
        return None

    def not_json(self, exc: Exception) -> bytes:
        """400 body for a body the JSON decoder refused, saying what is wrong with it."""
        text = _message(exc)
        if _non_finite_literal(exc):
            return self.error(
                "InvalidJSON",
                "the request body has NaN or Infinity, which JSON has no numbers for: send "
                f"finite numbers (or null where the input allows it): {text}",
            )
        if "infinity" in text or "too large" in text:
            return self.error(
                "InvalidJSON",
                "the request body has a number too large for a float (JSON numbers are "
                f"read as 64-bit floats, whose largest is about 1.8e308): {text}",
            )
        return self.error("InvalidJSON", f"the request body is not JSON: {text}")

    def not_a_column(self, name: str, value: object, count: int) -> bytes:
        """500 body for a batched node's output that is not one value per request."""
        column = _column(value)
        got = f"{len(column)} values" if column is not None else describe(plain(value))
        return self.error(
            "InvalidOutput",
            f"output {name!r}: expected a list of {count} values (one for each request of "
            f"the batch, in order), got {got} (the code {self.config.code_path} set it)",
        )

    def too_large(self, payload: bytes) -> bytes:
        return self.error(
            "ResponseTooLarge",
            f"the response is {len(payload)} bytes, over the limit of "
            f"{self.max_response} bytes ({self.max_response / 2**20:g} MB)",
        )

    def signature(self) -> str:
        """The inputs as "x: list[float], n: int"."""
        return names(self.config.inputs)


def _column(value: object) -> list[Any] | None:
    """A batched output as a list of its values: lists as they are, tuples and arrays
    (anything with tolist() giving a list) converted; None for anything else."""
    kind = type(value)
    if kind is list:
        return value  # type: ignore[return-value]
    if kind is tuple:
        return list(value)  # type: ignore[call-overload, no-any-return]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        converted = tolist()
        if type(converted) is list:
            return converted
    return None


def _non_finite_word(value: object, where: str) -> str:
    return "NaN or infinite" if where else f"{plain(value)!r}".replace("nan", "NaN")


def _encodes(node: Node, value: object) -> bool:
    try:
        node.dumps(value)
    except ENCODE_ERRORS:
        return False
    return True


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # an exception whose __str__ fails
        return f"<unprintable {type(exc).__name__}>"


def _non_finite_literal(exc: Exception) -> bool:
    """Whether the decoder stopped at NaN, Infinity or -Infinity (Python's json.dumps writes
    them by default, so a Python client sends them more often than one would think)."""
    if isinstance(exc, NonFiniteConstant):
        return True  # the standard library's codec
    doc, pos = getattr(exc, "doc", None), getattr(exc, "pos", None)
    if not isinstance(doc, str | bytes) or not isinstance(pos, int):
        return False
    ahead = doc[pos : pos + 9]
    word = ahead.decode("latin-1") if isinstance(ahead, bytes) else ahead
    return word.lstrip("-").startswith(("NaN", "Infinity"))


def traceback_lines(exc: BaseException, skip: int = 0) -> list[str]:
    """The traceback of `exc` as lines, without its first `skip` frames (ours)."""
    tb: TracebackType | None = exc.__traceback__
    for _ in range(skip):
        if tb is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return text.splitlines()


def _numpy_asarray() -> Callable[[list[Any]], Any]:
    try:
        import numpy
    except ImportError as exc:
        raise PrepareError(
            "the node's batch asks for numpy arrays (batch.numpy: true) but numpy cannot be "
            f"imported ({exc}): add numpy to the node's packages"
        ) from exc
    asarray: Callable[[list[Any]], Any] = numpy.asarray
    return asarray


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The variables saved in a checkpoint file (a pickled dict of {name: value})."""
    header = None
    try:
        with path.open("rb") as file:
            header = read_header(file)
            state = pickle.load(file)
    except OSError as exc:
        raise PrepareError(f"cannot read the checkpoint {path}: {exc.strerror or exc}") from exc
    except Exception as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError):
            hint = (
                f" (the checkpoint needs module {exc.name!r}: add its package to the node's "
                "packages; cloudpickle checkpoints also need cloudpickle)"
            )
        raise PrepareError(
            f"the checkpoint {path} cannot be loaded: {type(exc).__name__}: {_message(exc)}"
            + hint
            + version_differences(header)
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise PrepareError(
            f"the checkpoint {path} must hold a dict of {{variable name: value}}, "
            f"got {type(state).__name__}"
        )
    # The interpreter's own names (__builtins__, __name__, ...) are the runtime's to set.
    return {k: v for k, v in state.items() if not (k.startswith("__") and k.endswith("__"))}


def version_differences(header: dict[str, Any] | None) -> str:
    """Where this interpreter differs from the one that made a checkpoint, as a sentence."""
    if header is None:
        return ""
    import importlib.metadata
    import platform

    found = []
    made = str(header.get("python", ""))
    here = platform.python_version()
    if made and made.rsplit(".", 1)[0] != here.rsplit(".", 1)[0]:
        found.append(f"Python {made} (here {here})")
    packages = header.get("packages")
    for name, version in packages.items() if isinstance(packages, dict) else ():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            found.append(f"{name} {version} (here {installed})")
    if not found:
        return ""
    return (
        "; the checkpoint was made with "
        + ", ".join(found)
        + ": pin those versions in the node's packages"
    )


def load_models(models: Iterable[tuple[str, Path]], namespace: dict[str, Any]) -> None:
    """MLflow models loaded as pyfunc into their variables (mlflow must be in the image)."""
    for name, path in models:
        try:
            import mlflow.pyfunc  # type: ignore[import-not-found,unused-ignore]

            namespace[name] = mlflow.pyfunc.load_model(str(path))
        except ImportError as exc:
            raise PrepareError(
                f"model {name!r} ({path}) needs mlflow in the image: add mlflow-skinny (and "
                f"what the model needs) to the node's packages ({type(exc).__name__}: "
                f"{_message(exc)})"
            ) from exc
        except Exception as exc:
            raise PrepareError(
                f"model {name!r} ({path}) cannot be loaded as an MLflow pyfunc: "
                f"{type(exc).__name__}: {_message(exc)}"
            ) from exc


def prepare(config: NodeConfig, codec: Codec | None = None, max_response: int = MAX_BYTES) -> Node:
    """Build a node's namespace: its checkpoint's variables, then its set-up code run once."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    if config.checkpoint is not None:
        namespace.update(load_checkpoint(config.checkpoint))
    load_models(config.models, namespace)
    if config.setup is not None:
        try:
            exec(config.setup, namespace)
        except (Exception, SystemExit) as exc:
            lines = traceback_lines(exc, skip=1)
            raise PrepareError(
                f"the set-up code {config.setup_path} raised {type(exc).__name__}: "
                f"{_message(exc)}\n" + "\n".join(lines)
            ) from exc
    return Node(config, namespace, codec, max_response)


def names(variables: Iterable[Variable]) -> str:
    """Variables as "x: list[float], n: int" (for log lines)."""
    return ", ".join(f"{v.name}: {v.type.name}" for v in variables) or "none"
