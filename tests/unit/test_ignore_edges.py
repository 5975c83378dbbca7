"""Edges of the two ignore files found by fuzzing: patterns git or Docker treat specially,
patterns that made a naive regular expression backtrack for minutes, and names that are not
UTF-8 in a build folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gitops_nodes.spec.context import context_digest
from gitops_nodes.spec.dockerignore import DockerIgnore, DockerIgnoreError
from gitops_nodes.spec.repofiles import IgnoreRules, ReadError

# -- .gitops-nodes-ignore: as git (checked with `git check-ignore`) -------------------------


@pytest.mark.parametrize("line", ["!", "\\", "a\\", "sub/\\"])
def test_a_pattern_git_cannot_use_is_skipped_as_git_skips_it(line: str) -> None:
    rules = IgnoreRules([line, "data/"])
    assert rules.why("a") is None and rules.why("!") is None and rules.why("\\") is None
    assert rules.why("data/") == "matched by .gitops-nodes-ignore line 2 (data/)"


@pytest.mark.parametrize(
    ("line", "ignored"),
    [("[z-a]", "z"), ("[c-a]", "c"), ("[z-ab]", "bz"), ("[a-c-a]", "abc-"), ("[!z-a]", "abcy-")],
)
def test_a_backwards_range_matches_its_first_character_as_in_git(line: str, ignored: str) -> None:
    rules = IgnoreRules([line])
    assert {name for name in "abcyz-" if rules.why(name)} == set(ignored)


def test_blank_lines_do_not_shift_the_line_a_match_names() -> None:
    rules = IgnoreRules(["# data", "", "data/", "", "*.csv"])
    assert rules.why("data/") == "matched by .gitops-nodes-ignore line 3 (data/)"
    assert rules.why("x.csv") == "matched by .gitops-nodes-ignore line 5 (*.csv)"


# -- .dockerignore: as moby/patternmatcher ----------------------------------------------------


@pytest.mark.parametrize("pattern", ["[]", "[z-a]", "[a-]", "[-a]", "[ab", "x\\", "!", "! "])
def test_a_pattern_docker_refuses_is_an_error_naming_its_line(pattern: str) -> None:
    with pytest.raises(DockerIgnoreError) as caught:
        DockerIgnore(f"# ok\n*.md\n{pattern}\n")
    assert caught.value.line == 3


def test_a_bad_dockerignore_is_a_read_error_naming_file_and_line(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text("FROM scratch\n")
    (app / ".dockerignore").write_text("*.md\n[]\n")
    with pytest.raises(ReadError) as caught:
        context_digest(app, "Dockerfile", "app")
    assert caught.value.message_in_repo().startswith("app/.dockerignore:2: syntax error")
    assert "'[]'" in str(caught.value)


@pytest.mark.parametrize(
    ("pattern", "excluded", "kept"),
    [
        ("*a*a*b", ["aab", "xaayb", "aab/c"], ["ab", "a/ab", "aaa"]),
        ("**/*.log", ["x.log", "a/b/x.log"], ["x.log.1"]),
        ("a/**/b", ["a/b", "a/x/y/b", "a/b/c"], ["ab", "x/a/b"]),
        ("**/a/**/b", ["a/b", "x/a/y/b", "a/a/b"], ["b", "a/c"]),
        ("a/**", ["a/x", "a/x/y"], ["a", "ab"]),
        ("a**b", ["ab", "a/b", "ax/y/b"], ["axb", "a/xb"]),  # `**` inside: (.*/)?
        ("**b", ["b", "ab", "x/ab"], ["ba"]),  # moby: any path ending with the text
        ("a[^x]b", ["a/b", "ayb"], ["axb"]),  # a class may match `/`, as in Go
        ("[a-c]?", ["ax", "cz"], ["dx", "a"]),
        ("/tmp/*", ["tmp/x"], ["tmp"]),
        ("x\\*", ["x*"], ["xy"]),
    ],
)
def test_dockerignore_matches_as_moby_does(
    pattern: str, excluded: list[str], kept: list[str]
) -> None:
    rules = DockerIgnore(pattern)
    assert [path for path in excluded if not rules.excluded(path)] == []
    assert [path for path in kept if rules.excluded(path)] == []


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("*a*a*a*a*a*a*a*a*a*a*a*b", "a" * 200),
        ("*a*a*a*a*a*b", "a" * 100),
        ("**/**/**/**/**/**/**/**/x", "/".join(["d"] * 30) + "/y"),
        ("**/a/**/a/**/a/**/a/**/b", "/".join(["a"] * 60)),
        ("a**a**a**a**a**b", "/".join(["a"] * 60)),  # matched by the automaton, not re
        ("a*[^x]*a*[^x]*a*[^x]*b", "a" * 200),
    ],
)
def test_no_pattern_makes_matching_backtrack(pattern: str, path: str) -> None:
    rules = DockerIgnore(pattern)
    started = time.monotonic()
    assert not rules.excluded(path)
    assert time.monotonic() - started < 0.5  # was seconds to hours


# -- names that are not UTF-8 -----------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_hashed_by_its_bytes(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text("FROM scratch\n")
    latin1 = app / os.fsdecode(b"caf\xe9.txt")
    latin1.write_text("one")
    before = context_digest(app, "Dockerfile")
    latin1.write_text("two")
    assert context_digest(app, "Dockerfile") != before
    (app / ".dockerignore").write_text("caf?.txt\n")  # `?` is the one byte, as Docker's Go sees it
    after = context_digest(app, "Dockerfile")
    latin1.write_text("three")
    assert context_digest(app, "Dockerfile") == after
