"""JSON for the request path: orjson when the image has it, the standard library otherwise.

Both read UTF-8 bytes and write compact UTF-8 bytes. Values JSON has no word for are turned
into lists when they can be (numpy arrays and scalars through `tolist()`, sets); anything
else fails to encode. NaN and the infinities are refused on input by both, and so is a
number too large for a float (1e400); on output orjson writes them as null while the
standard library refuses them (gitops_nodes/pynode/node.py answers either with a 500 naming
the output, unless the node allows them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NamedTuple

ENCODE_ERRORS: tuple[type[Exception], ...] = (TypeError, ValueError, RecursionError)
# orjson's errors are ValueErrors; json's too, but for nesting deeper than the stack allows.
DECODE_ERRORS: tuple[type[Exception], ...] = (ValueError, RecursionError)


class Codec(NamedTuple):
    """A pair of JSON functions: bytes -> value and value -> bytes."""

    name: str
    loads: Callable[[bytes], object]
    dumps: Callable[[object], bytes]


def _default(value: object) -> object:
    """Turn what JSON cannot hold as it is into something it can, or refuse it."""
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, array.array
    if callable(tolist):
        return tolist()
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"an object of type {type(value).__name__} is not JSON serializable")


class NonFiniteConstant(ValueError):
    """NaN, Infinity or -Infinity in a body, which the standard library would read."""


def _refuse_constant(name: str) -> object:
    raise NonFiniteConstant(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # 1e400 reads as infinity
        raise ValueError(f"number is infinity when parsed as double: {text[:40]}")
    return value


def orjson_codec() -> Codec | None:
    """The orjson codec, or None when orjson is not installed."""
    try:
        import orjson
    except ImportError:
        return None
    option = orjson.OPT_SERIALIZE_NUMPY
    orjson_dumps = orjson.dumps

    def dumps(value: object) -> bytes:
        return orjson_dumps(value, default=_default, option=option)

    return Codec("orjson", orjson.loads, dumps)


def json_codec() -> Codec:
    """The standard library's json, configured to match orjson as closely as it can."""
    decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
    encoder = json.JSONEncoder(
        ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_default
    )

    def loads(data: bytes) -> object:
        return decoder.decode(data.decode())

    def dumps(value: object) -> bytes:
        return encoder.encode(value).encode()

    return Codec("json", loads, dumps)


def default_codec() -> Codec:
    """orjson when available, else the standard library."""
    return orjson_codec() or json_codec()
