"""The variable types a python node declares: input checks compiled once, and JSON Schemas.

Each type name maps to a checker, built once at start, that a request's value goes through:
it returns the value to store (the same object when it already fits, a float copy when ints
were given for floats) or `INVALID`. Explaining *why* a value is invalid is a separate, slow
path (`problem`) taken only for the requests that fail, so the checks themselves stay a few
type comparisons. Rules: `bool` is not an `int` (JSON true is not 1), an `int` is accepted
where a `float` is declared (and stored as a float), `any` is any JSON value, null included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

INVALID: Final = object()  # a checker's answer for a value of the wrong type

Checker = Callable[[object], object]
"""Takes a decoded JSON value; returns the value to store or INVALID."""


def _int(value: object) -> object:
    return value if type(value) is int else INVALID


def _float(value: object) -> object:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return _as_float(value)
    return INVALID


def _as_float(value: object) -> object:
    try:
        return float(value)  # type: ignore[arg-type]  # only ever an int here
    except OverflowError:
        return INVALID


def _str(value: object) -> object:
    return value if type(value) is str else INVALID


def _bool(value: object) -> object:
    return value if type(value) is bool else INVALID


def _list_float(value: object) -> object:
    if type(value) is not list:
        return INVALID
    for item in value:
        if type(item) is not float:
            return _floats(value)  # ints to convert, or a wrong item
    return value


def _floats(values: list[object]) -> object:
    converted: list[object] = []
    for item in values:
        item = _float(item)
        if item is INVALID:
            return INVALID
        converted.append(item)
    return converted


def _list_of(kind: type) -> Checker:
    """A check for a list whose items are all exactly of kind (bool is not an int)."""

    def check(value: object) -> object:
        if type(value) is not list:
            return INVALID
        for item in value:
            if type(item) is not kind:
                return INVALID
        return value

    return check


_list_int = _list_of(int)
_list_str = _list_of(str)


def _dict_float(value: object) -> object:
    if type(value) is not dict:
        return INVALID
    for item in value.values():
        if type(item) is not float:
            return _float_values(value)
    return value


def _float_values(values: dict[str, object]) -> object:
    converted: dict[str, object] = {}
    for key, item in values.items():
        item = _float(item)
        if item is INVALID:
            return INVALID
        converted[key] = item
    return converted


def _dict_any(value: object) -> object:
    return value if type(value) is dict else INVALID


class VarType(NamedTuple):
    """One declared type: its check, its JSON Schema, and how an error message names it."""

    name: str
    check: Checker | None  # None: any value passes as it is (the `any` type)
    schema: dict[str, Any]
    expected: str  # "list[float] (an array of numbers)"


_NUMBER = {"type": "number"}
TYPES: Final[dict[str, VarType]] = {
    t.name: t
    for t in (
        VarType("int", _int, {"type": "integer"}, "int (an integer)"),
        VarType("float", _float, _NUMBER, "float (a number)"),
        VarType("str", _str, {"type": "string"}, "str (a string)"),
        VarType("bool", _bool, {"type": "boolean"}, "bool (true or false)"),
        VarType(
            "list[float]",
            _list_float,
            {"type": "array", "items": _NUMBER},
            "list[float] (an array of numbers)",
        ),
        VarType(
            "list[int]",
            _list_int,
            {"type": "array", "items": {"type": "integer"}},
            "list[int] (an array of integers)",
        ),
        VarType(
            "list[str]",
            _list_str,
            {"type": "array", "items": {"type": "string"}},
            "list[str] (an array of strings)",
        ),
        VarType(
            "dict[str, float]",
            _dict_float,
            {"type": "object", "additionalProperties": _NUMBER},
            "dict[str, float] (an object whose values are numbers)",
        ),
        VarType("dict[str, any]", _dict_any, {"type": "object"}, "dict[str, any] (an object)"),
        VarType("any", None, {}, "any (any JSON value)"),
    )
}
_BY_SPELLING: Final = {name.replace(" ", ""): t for name, t in TYPES.items()}


def lookup(name: str) -> VarType | None:
    """The declared type spelled `name` (spaces do not matter), or None when unknown."""
    return _BY_SPELLING.get(name.replace(" ", ""))


def json_schema(var_type: VarType) -> dict[str, Any]:
    """A fresh copy of the JSON Schema of a type's values (callers may add to it)."""
    return _copy(var_type.schema)


def _copy(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in schema.items()}


def describe(value: object) -> str:
    """What a decoded JSON value is, in JSON's words: "a string", "null", "an array"."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "a boolean"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is str:
        return "a string"
    if kind is list:
        return "an array"
    if kind is dict:
        return "an object"
    return kind.__name__


def problem(var_type: VarType, value: object) -> str:
    """Why `value` failed `var_type`'s check, e.g. "item 2 is a string" (the slow path)."""
    name = var_type.name
    if name.startswith("list[") and type(value) is list:
        item_type = TYPES[name[5:-1]]
        for index, item in enumerate(value):
            if item_type.check is not None and item_type.check(item) is INVALID:
                return f"item {index} is {_what(item, item_type)}"
    if name == "dict[str, float]" and type(value) is dict:
        for key, item in value.items():
            if _float(item) is INVALID:
                return f"the value of key {key!r} is {_what(item, TYPES['float'])}"
    return f"got {_what(value, var_type)}"


def plain(value: object) -> object:
    """`value` with numpy's (and array's) values turned into Python ones, recursively.

    The slow path of an output check: the code computed a numpy float, a numpy string or an
    array where the spec declares float, str or list[float]. JSON writes them the same way,
    so they are accepted once made plain; anything else is returned as it was.
    """
    kind = type(value)
    if kind is list or kind is tuple:
        return [plain(item) for item in value]  # type: ignore[attr-defined]
    if kind is dict:
        return {key: plain(item) for key, item in value.items()}  # type: ignore[attr-defined]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return value


def _what(value: object, var_type: VarType) -> str:
    if var_type.check is _float and type(value) is int:
        return "an integer too large for a float"
    return describe(value)


def non_finite(value: object) -> str | None:
    """Where a NaN or an infinity is in a decoded output value, or None when there is none.

    "" when the value itself is one; else "item 2", "key 'a'", "key 'a', item 0". The slow
    path of an output check, taken only when the encoded answer shows a null (which is how
    orjson writes them) or the encoder refused the value.
    """
    kind = type(value)
    if kind is float or isinstance(value, float):
        return None if value - value == 0.0 else ""  # type: ignore[operator]  # inf-inf, nan
    if kind is list or kind is tuple:
        item: object
        for index, item in enumerate(value):  # type: ignore[arg-type]
            where = non_finite(item)
            if where is not None:
                return f"item {index}" + (f", {where}" if where else "")
    elif kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            where = non_finite(item)
            if where is not None:
                return f"key {key!r}" + (f", {where}" if where else "")
    else:
        tolist = getattr(value, "tolist", None)  # numpy values and arrays
        if callable(tolist):
            return non_finite(tolist())
    return None


def finite_or_null(value: object) -> object:
    """`value` with every NaN and infinity replaced by None (JSON's null), recursively."""
    kind = type(value)
    if kind is float or isinstance(value, float):
        return value if value - value == 0.0 else None  # type: ignore[operator]
    if kind is list or kind is tuple:
        return [finite_or_null(item) for item in value]  # type: ignore[attr-defined]
    if kind is dict:
        return {key: finite_or_null(item) for key, item in value.items()}  # type: ignore[attr-defined]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return finite_or_null(tolist())
    return value
