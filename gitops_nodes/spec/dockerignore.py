"""A build folder's `.dockerignore`, matched as Docker's build matches it.

Docker's rules differ from gitignore's, so this is not pathspec: patterns are relative to the
build folder's root (`*.md` matches only there; `**/*.md` anywhere), `*` and `?` never cross a
`/`, `**` crosses any number of folders, a pattern matching a folder excludes everything
under it, `!` re-includes, and the last pattern that matches a path decides.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

DOCKERIGNORE = ".dockerignore"


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    exclusion: bool  # a `!` pattern: re-includes what it matches


class DockerIgnore:
    """The patterns of one .dockerignore; excluded() says whether Docker leaves a path out."""

    def __init__(self, text: str) -> None:
        self._patterns: list[_Pattern] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            line = posixpath.normpath(line)
            if len(line) > 1 and line.startswith("/"):
                line = line.lstrip("/") or "/"
            self._patterns.append(_Pattern(re.compile(_regex(line)), exclusion))

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
            if pattern.regex.match(relative) or any(pattern.regex.match(p) for p in prefixes):
                matched = not pattern.exclusion
        return matched


def _regex(pattern: str) -> str:
    """A Docker ignore pattern as an anchored regular expression."""
    out = ["^"]
    index = 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "*":
            if index < len(pattern) and pattern[index] == "*":
                index += 1
                if index < len(pattern) and pattern[index] == "/":
                    index += 1  # `**/` is `**`
                out.append(".*" if index == len(pattern) else "(.*/)?")
            else:
                out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and index < len(pattern):
            out.append(re.escape(pattern[index]))
            index += 1
        elif char == "[":
            end = pattern.find("]", index)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[index:end].replace("\\", "\\\\")
                out.append("[^" + body[1:] + "]" if body.startswith("^") else f"[{body}]")
                index = end + 1
        else:
            out.append(re.escape(char))
    out.append("$")
    return "".join(out)
