"""A build folder's `.dockerignore`, matched as Docker's build matches it.

Docker's rules differ from gitignore's, so this is not pathspec: patterns are relative to the
build folder's root (`*.md` matches only there; `**/*.md` anywhere), `*` and `?` never cross a
`/`, `**` crosses any number of folders, a pattern matching a folder excludes everything
under it, `!` re-includes, and the last pattern that matches a path decides. Lines are read
as BuildKit's dockerignore reader reads them and matched as moby/patternmatcher matches them;
a pattern Docker refuses ("syntax error in pattern") is a DockerIgnoreError here, not a
pattern that silently matches something else.

Matching never backtracks without bound, whatever the pattern: a `.dockerignore` is the
repository's input, and a regular expression translated naively (`*a*a*a*b`,
`**/**/**/x`) takes exponential time on long names. Patterns whose `**` are whole path
components (nearly all) become regular expressions that commit to the leftmost match of
each fixed piece with atomic groups, which is correct for such pieces; any other pattern is
matched by a simulation of its automaton, linear in the path's length.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from gitops_nodes.errors import GitopsNodesError

DOCKERIGNORE = ".dockerignore"
_BOM = "\ufeff"

# Token kinds of a pattern: one character; `?`; a bracket class; `*` (no `/`); `**` inside a
# pattern, `(.*/)?` in moby's regular expression; `**` at its end, `.*` there.
_LIT, _ANY, _CLASS, _STAR, _DSTAR, _DEND = range(6)


@dataclass(frozen=True)
class _Token:
    kind: int
    text: str = ""  # _LIT: the character; _CLASS: the class as a Python regex
    whole: bool = False  # _DSTAR/_DEND: `**` is a whole path component (`a/**/b`, not `a**`)


class DockerIgnoreError(GitopsNodesError):
    """A .dockerignore line Docker's build refuses; line counts from 1."""

    def __init__(self, line: int, pattern: str, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.pattern = pattern
        self.problem = problem


@dataclass(frozen=True)
class _Pattern:
    exclusion: bool  # a `!` pattern: re-includes what it matches
    regex: re.Pattern[str] | None = None  # the fast, safe form, when the pattern has one
    tokens: tuple[_Token, ...] = ()  # otherwise: matched by _simulate
    suffix: str | None = None  # moby's `**literal`: any path ending with literal

    def matches(self, path: str) -> bool:
        if self.suffix is not None:
            return path.endswith(self.suffix)
        if self.regex is not None:
            return self.regex.match(path) is not None
        return _simulate(self.tokens, path)


class DockerIgnore:
    """The patterns of one .dockerignore; excluded() says whether Docker leaves a path out.
    Raises DockerIgnoreError for a pattern Docker's build refuses."""

    def __init__(self, text: str) -> None:
        self._patterns: list[_Pattern] = []
        for number, raw in enumerate(text.removeprefix(_BOM).splitlines(), start=1):
            if raw.startswith("#"):  # BuildKit: a comment only when `#` is the first character
                continue
            line = raw.strip()
            if not line:
                continue
            exclusion = line.startswith("!")
            pattern = line[1:].strip() if exclusion else line
            if not pattern:
                raise DockerIgnoreError(
                    number, line, 'illegal exclusion pattern "!": name what to re-include'
                )
            pattern = _clean(pattern)
            self._patterns.append(_compile(pattern, exclusion, number))

    @property
    def has_exclusions(self) -> bool:
        """Whether a `!` pattern may re-include something under an excluded folder."""
        return any(pattern.exclusion for pattern in self._patterns)

    def excluded(self, relative: str) -> bool:
        """Whether the path (relative to the build folder, with /) is left out of the context."""
        parents = relative.split("/")[:-1]
        prefixes = ["/".join(parents[: index + 1]) for index in range(len(parents))]
        matched = False
        for pattern in self._patterns:
            if pattern.exclusion != matched:
                continue  # as moby: this pattern cannot change the outcome
            if pattern.matches(relative) or any(pattern.matches(p) for p in prefixes):
                matched = not pattern.exclusion
        return matched


def _clean(pattern: str) -> str:
    """The pattern as BuildKit reads it: filepath.Clean'd, one leading `/` dropped."""
    pattern = posixpath.normpath(pattern)
    if pattern.startswith("//"):  # POSIX keeps a leading `//`; Go's Clean does not
        pattern = "/" + pattern.lstrip("/")
    if len(pattern) > 1 and pattern.startswith("/"):
        pattern = pattern[1:]
    return pattern


def _compile(pattern: str, exclusion: bool, number: int) -> _Pattern:
    tokens = _tokens(pattern, number)
    if (
        pattern.startswith("**")
        and not pattern.startswith("**/")
        and tokens
        and tokens[0].kind == _DSTAR
        and all(token.kind == _LIT for token in tokens[1:])
        and "\\" not in pattern  # an escape makes moby use its regular expression
    ):
        # moby matches `**` followed only by plain text as "the path ends with it".
        return _Pattern(exclusion, suffix=pattern[2:])
    regex = _safe_regex(tokens)
    if regex is None:
        return _Pattern(exclusion, tokens=tokens)
    return _Pattern(exclusion, regex=re.compile(regex))


def _tokens(pattern: str, number: int) -> tuple[_Token, ...]:
    """The pattern's tokens as moby's compile reads it; raises DockerIgnoreError where Go's
    filepath.Match or regexp refuses it."""
    tokens: list[_Token] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "*" and index < len(pattern) and pattern[index] == "*":
            whole = not tokens or tokens[-1] == _Token(_LIT, "/")
            index += 1
            if index < len(pattern) and pattern[index] == "/":
                index += 1  # `**/` is `**`
            else:
                whole = whole and index == len(pattern)
            kind = _DEND if index == len(pattern) else _DSTAR
            tokens.append(_Token(kind, whole=whole))
        elif char == "*":
            tokens.append(_Token(_STAR))
        elif char == "?":
            tokens.append(_Token(_ANY))
        elif char == "\\":
            if index == len(pattern):
                raise _syntax(number, pattern, "it ends with a `\\` that escapes nothing")
            tokens.append(_Token(_LIT, pattern[index]))
            index += 1
        elif char == "[":
            text, index = _class(pattern, index, number)
            tokens.append(_Token(_CLASS, text))
        else:
            tokens.append(_Token(_LIT, char))
    return tuple(tokens)


def _class(pattern: str, index: int, number: int) -> tuple[str, int]:
    """The bracket class opening before index, as a Python regex class, and the index after
    it; its grammar is Go filepath.Match's: `[^...]` negates, `\\` escapes, `-` makes a range
    between two characters, and the class must not be empty or unterminated."""
    negated = index < len(pattern) and pattern[index] == "^"
    index += negated
    items: list[str] = []
    while True:
        if index < len(pattern) and pattern[index] == "]" and items:
            return "[" + "^" * negated + "".join(items) + "]", index + 1
        low, index = _class_char(pattern, index, number)
        high = low
        if pattern[index] == "-":
            high, index = _class_char(pattern, index + 1, number)
        if low > high:  # Go's filepath.Match allows it, but Docker's regexp then refuses it
            raise _syntax(number, pattern, f"the range {low}-{high} runs backwards")
        items.append(re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}")


def _class_char(pattern: str, index: int, number: int) -> tuple[str, int]:
    if index >= len(pattern) or pattern[index] in "-]":
        raise _syntax(number, pattern, "a `[` class that is empty, unterminated or has a stray -")
    if pattern[index] == "\\":
        index += 1
    if index + 1 >= len(pattern):  # Go's getEsc: something must follow, at least the `]`
        raise _syntax(number, pattern, "a `[` class without its closing `]`")
    return pattern[index], index + 1


def _syntax(number: int, pattern: str, why: str) -> DockerIgnoreError:
    return DockerIgnoreError(
        number,
        pattern,
        f"syntax error in pattern {pattern!r}: {why}; Docker's build stops at it "
        '("Error checking context: syntax error in pattern"): fix or remove the line',
    )


def _safe_regex(tokens: tuple[_Token, ...]) -> str | None:
    """A regular expression equal to moby's for these tokens that matches in polynomial time
    of low degree, or None when the pattern has a `**` inside a component or a class that
    may match `/` (then _simulate matches it)."""
    parts: list[list[_Token] | int] = [[]]  # segments between `/`, and whole `**` as kinds
    for token in tokens:
        if token.kind in (_DSTAR, _DEND):
            if not token.whole:
                return None
            if parts and parts[-1] == []:
                parts.pop()  # the segment a `/` opened is the `**` itself
            if parts and isinstance(parts[-1], int):
                # `**/**` is `**`; `**/**` at the end is `.*`.
                parts[-1] = token.kind if token.kind == _DEND else parts[-1]
            else:
                parts.append(token.kind)
            if token.kind == _DSTAR:
                parts.append([])
        elif token == _Token(_LIT, "/"):
            parts.append([])
        elif token.kind == _CLASS and re.match(token.text, "/"):
            return None
        else:
            segment = parts[-1]
            assert isinstance(segment, list)
            segment.append(token)
    out = ["^"]
    group: list[str] = []  # the segments since the last `**`
    seen_dstar = False
    for part in parts:
        if isinstance(part, list):
            group.append(_segment(part))
            continue
        joined = "/".join(group)
        if not seen_dstar:
            out.append(joined + "/" if group else "")
        elif group:
            # Interior: commit to the leftmost folder where this fixed piece matches; a later
            # one never matches more, so giving up the others loses nothing.
            out.append(f"(?>(?:.*?/)??{joined}/)")
        group = []
        if part == _DEND:
            out.append(".*")
            return "".join(out) + r"\Z"
        seen_dstar = True
    joined = "/".join(group)
    out.append(f"(?:.*/)?{joined}" if seen_dstar else joined)
    return "".join(out) + r"\Z"


def _segment(tokens: list[_Token]) -> str:
    """One path component's tokens (no `/`, no class matching `/`) as a regex: each `*`
    before a fixed piece is atomic and lazy (as fnmatch.translate does), the last greedy."""
    pieces: list[list[str]] = [[]]
    for token in tokens:
        if token.kind == _STAR:
            if pieces[-1] or len(pieces) == 1:
                pieces.append([])  # `**` inside a component never gets here; `*` runs merge
        elif token.kind == _ANY:
            pieces[-1].append("[^/]")
        elif token.kind == _CLASS:
            pieces[-1].append(token.text)
        else:
            pieces[-1].append(re.escape(token.text))
    out = "".join(pieces[0])
    for piece in pieces[1:-1]:
        out += f"(?>[^/]*?{''.join(piece)})"
    if len(pieces) > 1:
        out += "[^/]*" + "".join(pieces[-1])
    return out


def _simulate(tokens: tuple[_Token, ...], path: str) -> bool:
    """Whether the tokens match all of path, by a breadth-first run of their automaton:
    O(len(path) * len(tokens)) whatever the pattern. A `**` inside a pattern, `(.*/)?`, has two
    states: before it (i), which may skip it, and within it (end + 1 + i), which must reach a
    `/` to leave it."""
    end = len(tokens)
    states = _closure({0}, tokens)
    for char in path:
        following: set[int] = set()
        for state in states:
            index = state - end - 1 if state > end else state
            if index == end:
                continue
            token = tokens[index]
            kind = token.kind
            if kind == _LIT:
                if char == token.text:
                    following.add(index + 1)
            elif kind == _ANY:
                if char != "/":
                    following.add(index + 1)
            elif kind == _CLASS:
                if re.match(token.text, char):
                    following.add(index + 1)
            elif kind == _STAR:
                if char != "/":
                    following.add(index)
            elif kind == _DEND:
                if char != "\n":  # moby's `.` is Go's, which stops at a newline
                    following.add(index)
            elif char != "\n":
                following.add(end + 1 + index)
                if char == "/":
                    following.add(index + 1)  # the `/` that ends `(.*/)?`
        if not following:
            return False
        states = _closure(following, tokens)
    return end in states


def _closure(states: set[int], tokens: tuple[_Token, ...]) -> set[int]:
    """states plus what they reach without reading: past a `*`, `**` matching nothing."""
    result = set(states)
    pending = list(states)
    while pending:
        state = pending.pop()
        skips = state < len(tokens) and tokens[state].kind in (_STAR, _DSTAR, _DEND)
        if skips and state + 1 not in result:
            result.add(state + 1)
            pending.append(state + 1)
    return result
