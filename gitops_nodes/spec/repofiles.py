"""The one way the spec loader finds and reads the repository's files, and what it refuses.

Every path is checked the same way: it must stay inside the repository (symbolic links are
never followed out of it), and only regular files and folders are read (a FIFO, device or
socket where a file is expected is an error naming it, never a read that blocks or never
ends). Files are opened without following a final symbolic link and without blocking, checked
with fstat, and read up to a bound. Folders that cannot be read are errors naming them, never
skipped. `.gitops-nodes-ignore` at the repository root (gitignore syntax) keeps data files
and other YAML out of the load; every YAML file left out is reported with the reason.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import pathspec
from pathspec.patterns.gitignore import GitIgnorePatternError
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

from gitops_nodes.errors import GitopsNodesError
from gitops_nodes.spec.errors import SpecProblem
from gitops_nodes.spec.state import IgnoredFile as Ignored

IGNORE_FILE = ".gitops-nodes-ignore"
MAX_FILE_SIZE = 32 * 1024 * 1024  # a spec file's bytes; larger ones are refused unread
_MIB = 1024 * 1024
YAML_SUFFIXES = (".yaml", ".yml")


class ReadError(GitopsNodesError):
    """A file or folder of the repository that cannot be read as asked; path is relative."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def as_problem(self) -> SpecProblem:
        """The problem as a spec problem of the file itself (no line: it was not read)."""
        return SpecProblem(self.path, 0, 0, "", self.problem)

    def message_in_repo(self) -> str:
        """The problem with its path, for a message about the field that led to the path."""
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class RepoWalk:
    """What a walk of the repository found: the YAML files to read, in order, the ones left
    out, and the paths it could not read."""

    files: tuple[str, ...]
    ignored: tuple[Ignored, ...]
    problems: tuple[SpecProblem, ...]


class IgnoreRules:
    """The repository's `.gitops-nodes-ignore`: gitignore syntax, relative to the root."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines
        # One pattern per line, so that a match's index is its line (from_lines drops empty
        # lines, which shifted the line named), each compiled as git would use it.
        self._spec = pathspec.GitIgnoreSpec([_git_pattern(line) for line in lines])

    @classmethod
    def read(cls, root: Path) -> IgnoreRules:
        """The rules of the repository at root (none when it has no ignore file)."""
        if not os.path.lexists(root / IGNORE_FILE):
            return cls([])
        data = read_file(root, IGNORE_FILE, limit=_MIB)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ReadError(IGNORE_FILE, "expected UTF-8 text, found bytes that are not") from None
        return cls(text.splitlines())

    def why(self, relative: str) -> str | None:
        """The reason relative (a folder ends with /) is ignored, or None when it is not."""
        if not self._lines:
            return None
        result = self._spec.check_file(relative)
        if not result.include or result.index is None:
            return None
        pattern = self._lines[result.index].strip()
        return f"matched by {IGNORE_FILE} line {result.index + 1} ({pattern})"


def _git_pattern(line: str) -> GitIgnoreSpecPattern:
    """The line's pattern as git uses it. Git skips a pattern it cannot use (a lone `!`, a
    trailing `\\`): it matches nothing, and never stops git. A backwards range (`[z-a]`)
    is no error to git either: it matches its first character only (wildmatch)."""
    for text in (line, _forward_ranges(line)):
        try:
            return GitIgnoreSpecPattern(text)
        except (GitIgnorePatternError, re.error):
            continue
    return GitIgnoreSpecPattern("#")  # a comment: matches nothing


def _forward_ranges(line: str) -> str:
    """line with each backwards range `x-y` of its bracket expressions read as git's
    wildmatch reads it: the character x alone. A `-` right after a range is a literal to git;
    it moves to the class's end, where the regular expression pathspec makes reads it so.
    Bracket expressions are found as pathspec finds them."""
    out: list[str] = []
    index = 0
    while index < len(line):
        if line[index] != "[":
            out.append(line[index])
            index += 1
            continue
        start = index + 1
        if start < len(line) and line[start] in "!^":
            start += 1
        close = line.find("]", start + 1 if start < len(line) and line[start] == "]" else start)
        if close == -1:
            out.append(line[index:])
            break
        out.append(line[index:start])
        out.append(_forward_body(line[start:close]))
        out.append("]")
        index = close + 1
    return "".join(out)


def _forward_body(body: str) -> str:
    kept: list[str] = []
    dash = False
    previous: str | None = None  # the character a `-` would start a range from
    index = 0
    while index < len(body):
        char = body[index]
        if char == "-" and previous is not None and index + 1 < len(body):
            high = body[index + 1]
            if high >= previous:
                kept.append("-" + high)
            previous = None  # as wildmatch: after a range, a `-` is a literal
            index += 2
            continue
        if char == "-" and kept:
            dash = True
        else:
            kept.append(char)
            previous = char
        index += 1
    return "".join(kept) + ("-" if dash else "")


def walk_yaml(root: Path, rules: IgnoreRules, skip: frozenset[str]) -> RepoWalk:
    """Every .yaml/.yml regular file under root (skipping dot-named entries, the relative
    paths in skip, and what the rules ignore), sorted; never leaves root."""
    files: list[str] = []
    ignored: list[Ignored] = []
    problems: list[SpecProblem] = []
    pending = [""]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(root / folder if folder else root) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            problems.append(_folder_problem(folder or ".", exc))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relative = f"{folder}/{entry.name}" if folder else entry.name
            is_yaml = entry.name.endswith(YAML_SUFFIXES)
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                problems.append(ReadError(relative, _os_problem(exc)).as_problem())
                continue
            if stat.S_ISDIR(info.st_mode):
                reason = rules.why(relative + "/")
                if reason is not None:
                    ignored.append(Ignored(relative + "/", reason))
                else:
                    pending.append(relative)
                continue
            if not is_yaml or relative in skip:
                if stat.S_ISLNK(info.st_mode) and _is_folder_link(root, relative):
                    reason = "a symbolic link to a folder: not followed"
                    ignored.append(Ignored(relative + "/", reason))
                continue
            reason = rules.why(relative)
            if reason is not None:
                ignored.append(Ignored(relative, reason))
            elif stat.S_ISLNK(info.st_mode):
                trouble = _link_trouble(root, relative)
                if trouble is not None:
                    problems.append(ReadError(relative, trouble).as_problem())
                else:
                    target = os.readlink(root / relative)
                    ignored.append(
                        Ignored(relative, f"a symbolic link (to {target}): read where it points")
                    )
            elif not stat.S_ISREG(info.st_mode):
                problems.append(ReadError(relative, _special(info.st_mode)).as_problem())
            elif info.st_size > MAX_FILE_SIZE:
                problems.append(ReadError(relative, _too_big(info.st_size)).as_problem())
            else:
                files.append(relative)
    return RepoWalk(tuple(sorted(files)), tuple(sorted(ignored)), tuple(problems))


def read_file(root: Path, relative: str, limit: int | None = None) -> bytes:
    """The bytes of the regular file root/relative, at most limit of them; raises ReadError
    for anything else (a link leading out of root, a FIFO, a device, no permission, ...)."""
    limit = MAX_FILE_SIZE if limit is None else limit
    path = inside(root, relative)
    descriptor = _open_regular(path, relative)
    try:
        size = os.fstat(descriptor).st_size
        if size > limit:
            raise ReadError(relative, _too_big(size, limit))
        chunks: list[bytes] = []
        remaining = limit + 1  # a file that grew meanwhile is still read only this far
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, _MIB))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise ReadError(relative, _os_problem(exc)) from None
    finally:
        os.close(descriptor)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ReadError(relative, _too_big(len(data), limit))
    return data


def open_regular(path: Path, shown: str) -> int:
    """A read-only descriptor of path, which must be a regular file (a final symbolic link is
    not followed); raises ReadError naming shown."""
    return _open_regular(path, shown)


def inside(root: Path, relative: str) -> Path:
    """root/relative with its symbolic links resolved, which must stay inside root (itself
    resolved); raises ReadError for a link that leads out, loops or leads nowhere."""
    path = root / relative
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        if os.path.lexists(path) and os.path.islink(path):
            raise ReadError(relative, "a symbolic link to a path that does not exist") from None
        raise ReadError(relative, "no such file") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop (3.11)
        raise ReadError(relative, _resolve_problem(exc)) from None
    if not resolved.is_relative_to(root):
        raise ReadError(
            relative,
            f"leads outside the repository (to {resolved}); gitops-nodes reads only files "
            "inside it",
        )
    return resolved


def _open_regular(path: Path, shown: str) -> int:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ReadError(shown, "a symbolic link where a file is expected") from None
        raise ReadError(shown, _os_problem(exc)) from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise ReadError(shown, _special(mode))
    return descriptor


def _link_trouble(root: Path, relative: str) -> str | None:
    try:
        inside(root, relative)
    except ReadError as exc:
        return exc.problem
    return None


def _is_folder_link(root: Path, relative: str) -> bool:
    try:
        return (root / relative).is_dir()
    except (OSError, RuntimeError):
        return False


def open_problem(mode: int) -> str:
    """What is wrong with reading a path of this mode as a file."""
    return _special(mode)


def os_problem(exc: OSError) -> str:
    """An OSError said for a message about a path (permission: what to do)."""
    return _os_problem(exc)


def _special(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ]
    what = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{what}, not a regular file; gitops-nodes reads only regular files and folders"


def _too_big(size: int, limit: int | None = None) -> str:
    limit = MAX_FILE_SIZE if limit is None else limit
    return (
        f"{size / _MIB:.1f} MiB, over the {limit // _MIB} MiB a spec file may have; "
        f"if it is not spec, list it in {IGNORE_FILE}"
    )


def _folder_problem(folder: str, exc: OSError) -> SpecProblem:
    return ReadError(
        folder,
        f"cannot read this folder: {_os_problem(exc)}; make it readable, "
        f"or list it in {IGNORE_FILE}",
    ).as_problem()


def _os_problem(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; make it readable by the user gitops-nodes runs as"
    return f"cannot read: {exc.strerror or type(exc).__name__}"


def _resolve_problem(exc: BaseException) -> str:
    if isinstance(exc, RuntimeError) or (isinstance(exc, OSError) and exc.errno == errno.ELOOP):
        return "a symbolic link that loops"
    if isinstance(exc, OSError):
        return _os_problem(exc)
    return f"cannot resolve: {exc}"
