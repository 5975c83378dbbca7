"""YAML text to Python values with YAML 1.2 core-schema meaning, bounded in depth and size.

libyaml (PyYAML's C parser) turns the bytes into events; this module builds the values from
them in one iterative pass, which is faster than PyYAML's own constructors and leaves every
rule here rather than in PyYAML's YAML 1.1 defaults:

- Scalars mean what the YAML 1.2 core schema says: only `true`/`false` (and their `True`,
  `TRUE` spellings) are booleans, `null`/`~`/empty is null, integers are decimal, `0o17` or
  `0x1F`; `no`, `on`, `0755` (the integer 755), `12:30` and `1.10` (the float 1.1) are not
  changed the 1.1 way (no octal by a leading zero, no sexagesimal, no yes/no booleans).
- Only the core tags are known (`!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!seq`,
  `!!map`); any other tag, `!!python/...` included, is refused.
- A key written twice in one mapping is refused; merge keys (`<<: *base`, `<<: [*a, *b]`)
  work as YAML defines them: the mapping's own keys override merged ones.
- Nesting deeper than MAX_DEPTH is refused as soon as it is seen (libyaml's scanner slows
  down with the square of the depth), aliases may not expand a file past MAX_EXPANSION
  values (a "billion laughs" document is refused, not expanded), and a file holds at most
  MAX_DOCUMENTS documents.

Every problem is a YamlError with the line and column where it is.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

MAX_DEPTH = 100  # nested sequences and mappings in one document
# Values one file holds once its aliases are expanded, its documents together: counted per
# file, as every document of a file is held at once (merge keys copy what they merge).
MAX_EXPANSION = 1_000_000
MAX_DOCUMENTS = 100_000  # documents in one file (each costs the parser ~7 us and its memory)
_INT_DIGITS = 1000  # longer integers are refused: no field needs them, int() is quadratic

try:  # libyaml's parser; PyYAML's wheels ship it, a build from source may not
    from yaml._yaml import CParser as _PARSER
except ImportError:  # pragma: no cover - the pure-Python parser: same events, slower
    from yaml import SafeLoader as _PARSER  # type: ignore[assignment]

_CORE = "tag:yaml.org,2002:"
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+\Z")
_OCT = re.compile(r"0o[0-7]+\Z")
_HEX = re.compile(r"0x[0-9a-fA-F]+\Z")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)\Z")
_NAN = re.compile(r"\.(nan|NaN|NAN)\Z")
_MERGE = object()  # the key of a merge (`<<`), told apart from a quoted "<<"
_PLAIN_FIRST = frozenset("0123456789+-.~<")  # how a plain scalar that is not a string starts
_WORDS = frozenset({"null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE"})


class YamlError(Exception):
    """The text is not YAML this loader accepts; line and column are 1-based."""

    def __init__(self, line: int, column: int, problem: str) -> None:
        super().__init__(f"{line}:{column}: {problem}")
        self.line = line
        self.column = column
        self.problem = problem


def parse_documents(data: bytes | str, starts: list[tuple[int, int]] | None = None) -> list[Any]:
    """Every document of a YAML stream as plain values (dict, list, str, int, float, bool,
    None); raises YamlError. starts, when given, gets each document's first line (0-based)
    and character index, so the positions of a problem can be found in that document alone."""
    try:
        return _Builder(starts).run(data)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlError(line, column, f"invalid YAML: {_syntax_problem(exc, data)}") from None
    except yaml.YAMLError as exc:  # the reader's: bytes that are not UTF-8, NUL, ...
        problem = f"invalid YAML: {_reader_problem(exc)}"
        raise YamlError(*_reader_position(exc, data), problem) from None


# libyaml's context for a problem, as the construct the user wrote.
CONSTRUCTS = {
    "while scanning a quoted scalar": "the quoted string",
    "while parsing a flow sequence": "the [ list",
    "while parsing a flow mapping": "the { mapping",
    "while parsing a block mapping": "the mapping",
    "while parsing a block collection": "the list",
}


def _syntax_problem(exc: yaml.MarkedYAMLError, data: bytes | str) -> str:
    """libyaml's problem, with the construct it was reading and where that began; a tab
    that indents a line said as such (libyaml: "cannot start any token")."""
    problem = exc.problem or str(exc)
    at = exc.problem_mark
    if at is not None and _character(data, at.line, at.column) == "\t":
        return "a tab character; expected spaces (YAML indents with spaces, never tabs)"
    began = exc.context_mark
    construct = CONSTRUCTS.get(exc.context or "")
    if construct is None or began is None:
        return problem
    where = f"{began.line + 1}:{began.column + 1}"
    if construct == "the quoted string":
        return f"{problem}; expected the quoted string that began at {where} to be closed"
    return f"{problem}, in {construct} that began at {where}"


def _character(data: bytes | str, line: int, column: int) -> str:
    """The character at a 0-based line and column of data ('' past its end)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    lines = text.split("\n", line + 1)
    return lines[line][column : column + 1] if line < len(lines) else ""


def _reader_position(exc: yaml.YAMLError, data: bytes | str) -> tuple[int, int]:
    position = getattr(exc, "position", None)
    if not isinstance(position, int):
        return 1, 1
    before = data[:position]
    newline: Any = b"\n" if isinstance(before, bytes) else "\n"
    line = before.count(newline) + 1
    return line, position - (before.rfind(newline) + 1) + 1


def _reader_problem(exc: yaml.YAMLError) -> str:
    reason = str(getattr(exc, "reason", "") or exc)
    character = getattr(exc, "character", None)
    if "UTF" in reason or "octet" in reason or character == -1 or isinstance(character, bytes):
        return (
            "expected UTF-8 text (or UTF-16 with a byte-order mark), found bytes that are "
            "not; is it a binary or data file? list it in .gitops-nodes-ignore"
        )
    if isinstance(character, int) and character >= 0:
        what = "a NUL byte" if character == 0 else f"the character U+{character:04X}"
        hint = " (binary data, or UTF-16 without a byte-order mark?)" if character == 0 else ""
        return f"expected printable text, found {what}{hint}"
    return f"expected YAML text: {reason}"


class _Frame:
    """A sequence or mapping being built; `weight` counts the values it holds."""

    __slots__ = ("anchor", "dict_", "key", "keys", "list_", "mark", "merges", "weight")

    def __init__(self, anchor: str | None, mark: Any, mapping: bool) -> None:
        self.anchor = anchor
        self.mark = mark
        self.weight = 1
        self.list_: list[Any] | None = None if mapping else []
        self.dict_: dict[Any, Any] | None = {} if mapping else None
        self.key: Any = _NOTHING
        self.keys: set[Any] = set()  # the keys written, to refuse one written twice
        self.merges: list[tuple[Any, Any]] = []  # (merged value, mark), in order written


_NOTHING = object()


def _too_many_values(documents: int) -> str:
    if documents == 1:
        return (
            f"aliases expand this document past {MAX_EXPANSION:,} values; expected a document "
            "that does not repeat itself that much"
        )
    return (
        f"this file's documents hold more than {MAX_EXPANSION:,} values together (aliases "
        "expanded); expected a file that does not repeat itself that much"
    )


class _Builder:
    """One pass over libyaml's events, keeping a stack of the collections being built."""

    def __init__(self, starts: list[tuple[int, int]] | None) -> None:
        self.anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, weight)
        self.starts = starts

    def run(self, data: bytes | str) -> list[Any]:
        parser = _PARSER(data)
        documents: list[Any] = []
        stack: list[_Frame] = []
        scalar, alias = yaml.ScalarEvent, yaml.AliasEvent
        seq_start, map_start = yaml.SequenceStartEvent, yaml.MappingStartEvent
        seq_end, map_end = yaml.SequenceEndEvent, yaml.MappingEndEvent
        doc_start = yaml.DocumentStartEvent
        anchors = self.anchors
        held = 0  # the values of the documents built so far (aliases expanded)
        try:
            while True:
                event: Any = parser.get_event()
                if event is None:
                    break
                kind = event.__class__
                if kind is scalar:
                    weight = 1
                    text = event.value
                    if event.tag is None and (
                        event.style or (text and text[0] not in _PLAIN_FIRST and text not in _WORDS)
                    ):
                        value = text  # the common case: a string, nothing to resolve
                    else:
                        value = self._scalar(event)
                    if event.anchor is not None:
                        anchors[event.anchor] = (value, 1)
                elif kind is map_start or kind is seq_start:
                    self._check_tag(event, "map" if kind is map_start else "seq")
                    if len(stack) >= MAX_DEPTH:
                        raise _error(
                            event.start_mark,
                            f"nesting deeper than {MAX_DEPTH} levels; expected a flatter document",
                        )
                    stack.append(_Frame(event.anchor, event.start_mark, kind is map_start))
                    continue
                elif kind is map_end or kind is seq_end:
                    frame = stack.pop()
                    value, weight = self._finish(frame), frame.weight
                    if frame.anchor is not None:
                        anchors[frame.anchor] = (value, weight)
                elif kind is alias:
                    if event.anchor not in anchors:
                        raise _error(
                            event.start_mark,
                            f"the alias *{event.anchor} names no anchor defined before it",
                        )
                    value, weight = anchors[event.anchor]
                elif kind is doc_start:
                    anchors.clear()  # anchors do not cross documents
                    if self.starts is not None:
                        mark = event.start_mark
                        self.starts.append((mark.line, mark.index))
                    continue
                else:
                    continue
                if not stack:
                    documents.append("<<" if value is _MERGE_KEY else value)
                    held += weight
                    if held > MAX_EXPANSION:
                        raise _error(event.start_mark, _too_many_values(len(documents)))
                    if len(documents) > MAX_DOCUMENTS:
                        raise _error(
                            event.start_mark,
                            f"more than {MAX_DOCUMENTS:,} documents in one file; expected "
                            "fewer (split the file)",
                        )
                    continue
                frame = stack[-1]
                frame.weight += weight
                if held + frame.weight > MAX_EXPANSION:
                    raise _error(event.start_mark, _too_many_values(len(documents) + 1))
                key = frame.key
                if key is _NOTHING or frame.list_ is not None or key is _MERGE:
                    self._add(frame, value, event)
                else:  # the common case: the value of a key
                    frame.dict_[key] = value  # type: ignore[index]
                    frame.key = _NOTHING
        finally:
            parser.dispose()
        return documents

    def _add(self, frame: _Frame, value: Any, event: Any) -> None:
        if value is _MERGE_KEY and (frame.list_ is not None or frame.key is not _NOTHING):
            value = "<<"  # a plain << merges only where it is a mapping's key
        if frame.list_ is not None:
            frame.list_.append(value)
            return
        if frame.key is _NOTHING:
            if isinstance(value, dict | list):
                raise _error(event.start_mark, "expected a scalar as a mapping key")
            if value is _MERGE_KEY:
                frame.key = _MERGE
                return
            if value in frame.keys:
                problem = f"duplicate key {value!r}; expected each key once in a mapping"
                raise _error(event.start_mark, problem)
            frame.keys.add(value)
            frame.key = value
            return
        frame.key = _NOTHING
        frame.merges.append((value, event.start_mark))

    def _finish(self, frame: _Frame) -> Any:
        if frame.list_ is not None:
            return frame.list_
        own = frame.dict_
        assert own is not None
        if not frame.merges:
            return own
        merged: dict[Any, Any] = {}
        # Earlier merges win over later ones, and the mapping's own keys over all of them.
        for value, mark in reversed(frame.merges):
            sources = value if isinstance(value, list) else [value]
            for source in reversed(sources):
                if not isinstance(source, dict):
                    raise _error(mark, "expected a mapping or a list of mappings to merge (<<)")
                merged.update(source)
        merged.update(own)
        return merged

    def _check_tag(self, event: Any, kind: str) -> None:
        tag = event.tag
        if tag is not None and tag != "!" and tag != _CORE + kind:
            raise _error(event.start_mark, f"unknown tag {tag}; expected no tag here")

    def _scalar(self, event: Any) -> Any:
        value: str = event.value
        tag = event.tag
        if tag is None:
            if event.style:  # quoted or block: always a string
                return value
            return _resolve_plain(value, event.start_mark)
        if tag == "!" or tag == _CORE + "str":
            return value
        short = tag.removeprefix(_CORE)
        if short in ("int", "float", "bool", "null") and tag != short:
            resolved = _resolve_plain(value, event.start_mark)
            expected = {"int": int, "float": float, "bool": bool, "null": type(None)}[short]
            if short == "float" and type(resolved) is int:
                return float(resolved)
            if type(resolved) is expected:
                return resolved
            raise _error(event.start_mark, f"expected a value of the tag {tag}, got {value!r}")
        raise _error(event.start_mark, f"unknown tag {tag}; expected no tag here")


_MERGE_KEY = object()


def _resolve_plain(value: str, mark: Any) -> Any:
    """A plain (unquoted) scalar's value under the YAML 1.2 core schema."""
    if value == "<<":
        return _MERGE_KEY
    if value in _NULLS:
        return None
    first = value[0]
    if not (first.isdigit() or first in "+-.") and value not in _BOOLS:
        return value  # the common case: a word
    if value in _BOOLS:
        return _BOOLS[value]
    if _INT.match(value):
        if len(value) > _INT_DIGITS:
            raise _error(mark, f"an integer of {len(value)} digits; expected at most {_INT_DIGITS}")
        return int(value, 10)
    if _OCT.match(value):
        return _bounded_int(value[2:], 8, mark)
    if _HEX.match(value):
        return _bounded_int(value[2:], 16, mark)
    if _FLOAT.match(value):
        return float(value)
    if _INF.match(value):
        return -math.inf if value.startswith("-") else math.inf
    if _NAN.match(value):
        return math.nan
    return value


def _bounded_int(digits: str, base: int, mark: Any) -> int:
    if len(digits) > _INT_DIGITS:
        raise _error(mark, f"an integer of {len(digits)} digits; expected at most {_INT_DIGITS}")
    return int(digits, base)


def _error(mark: Any, problem: str) -> YamlError:
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return YamlError(line, column, f"invalid YAML: {problem}")
