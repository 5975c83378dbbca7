"""Whatever a repository holds, the loader returns a spec or a SpecErrors naming the file:
encodings, depth, special files, symbolic links, permissions, size, the ignore file, YAML 1.2
scalars, merge keys, build folder digests and the cache."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import gitops_nodes.spec.load as load_module
import gitops_nodes.spec.repofiles as repofiles
from gitops_nodes.cli import main
from gitops_nodes.spec import yaml12
from gitops_nodes.spec.access import resolve_access
from gitops_nodes.spec.context import context_digest
from gitops_nodes.spec.dockerignore import DockerIgnore
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import SpecLoader, load_spec
from gitops_nodes.spec.models import Access
from gitops_nodes.spec.settings import load_settings
from gitops_nodes.spec.yaml12 import MAX_DEPTH, YamlError, parse_documents

WriteRepo = Callable[[dict[str, str]], Path]

WEB = """\
apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: web
spec:
  image:
    name: busybox
    port: 8080
"""

BUILT = """\
apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: built
spec:
  image:
    build: app
    port: 8080
"""


def _errors(root: Path) -> list[str]:
    with pytest.raises(SpecErrors) as caught:
        load_spec(root)
    return [str(problem) for problem in caught.value.problems]


# -- YAML 1.2 meaning ---------------------------------------------------------------------


def test_plain_scalars_mean_what_yaml_1_2_core_says() -> None:
    text = "a: no\nb: on\nc: 0755\nd: 12:30\ne: 1.10\nf: 0x1F\ng: 0o17\nh: yes\ni: True\nj: ~\n"
    assert parse_documents(text.encode()) == [
        {
            "a": "no",
            "b": "on",
            "c": 755,
            "d": "12:30",
            "e": 1.1,
            "f": 31,
            "g": 15,
            "h": "yes",
            "i": True,
            "j": None,
        }
    ]


def test_quoted_scalars_and_str_tags_stay_strings() -> None:
    assert parse_documents(b"a: '0755'\nb: \"true\"\nc: !!str 12\n") == [
        {"a": "0755", "b": "true", "c": "12"}
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a: !!python/object/apply:os.system [ls]", "unknown tag"),
        ("a: !!binary aGk=", "unknown tag"),
        ("a: !!int x", "expected a value of the tag"),
        ("a: *nowhere", "names no anchor"),
        ("a: 1" + "0" * 1500, "digits"),
        ("a: 1\na: 2", "duplicate key 'a'"),
    ],
)
def test_what_the_loader_refuses_is_a_yaml_error_with_a_position(text: str, words: str) -> None:
    with pytest.raises(YamlError) as caught:
        parse_documents(text.encode())
    assert words in caught.value.problem
    assert caught.value.line >= 1 and caught.value.column >= 1


def test_merge_keys_take_overrides_as_yaml_defines_them(write_repo: WriteRepo) -> None:
    alias = """\
        apiVersion: gitops-nodes/v1
        kind: Alias
        metadata: {name: shop}
        spec:
          nodes:
            - &base {node: web, weight: 1}
            - <<: *base
              node: api
              weight: 3
        """
    api = WEB.replace("name: web", "name: api")
    root = write_repo({"web.yaml": WEB, "api.yaml": api, "alias.yaml": alias})
    assert load_spec(root).aliases["shop"].routes == (("web", 1), ("api", 3))


def test_an_alias_bomb_is_refused_not_expanded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    started = time.monotonic()
    with pytest.raises(YamlError, match="aliases expand"):
        parse_documents("\n".join(lines).encode())
    assert time.monotonic() - started < 10


def test_merges_repeated_across_documents_are_bounded_per_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each `- <<: *a` copies the mapping it merges: bounded per document only, 40 documents
    # of 490 such lines took 538 MB (a file under the size limit, ~30 GB).
    monkeypatch.setattr(yaml12, "MAX_EXPANSION", 10_000)
    document = "a: &a {" + ", ".join(f"k{i}: 0" for i in range(100)) + "}\nb:\n"
    document += "  - <<: *a\n" * 40  # ~8,400 values (keys count): within the bound alone
    assert len(parse_documents(document.encode())[0]["b"]) == 40
    with pytest.raises(YamlError, match="this file's documents hold more than 10,000 values"):
        parse_documents(f"---\n{document}".encode() * 3)


def test_a_file_of_very_many_documents_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: a 31 MiB file of `--- 1` lines took 36 s and 876 MB.
    monkeypatch.setattr(yaml12, "MAX_DOCUMENTS", 1_000)
    assert len(parse_documents(b"--- 1\n" * 1_000)) == 1_000
    with pytest.raises(YamlError, match="more than 1,000 documents in one file") as caught:
        parse_documents(b"--- 1\n" * 1_001)
    assert caught.value.line == 1_001


# -- encodings and depth: errors with file and line, never a traceback ----------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"# caf\xe9\n" + WEB.encode(), "expected UTF-8 text"),
        (WEB.encode() + b'  env: {A: "a\x00b"}\n', "NUL byte"),
        (WEB.encode("utf-16-le"), "NUL byte"),
        (bytes(range(256)) * 4, "invalid YAML"),
        (b"a: " + b"[" * 5000 + b"]" * 5000, f"nesting deeper than {MAX_DEPTH} levels"),
    ],
    ids=["latin-1 byte", "NUL", "UTF-16 without BOM", "binary", "deep nesting"],
)
def test_unreadable_yaml_is_a_spec_error_naming_the_file(
    write_repo: WriteRepo, data: bytes, words: str
) -> None:
    root = write_repo({})
    (root / "bad.yaml").write_bytes(data)
    (problem,) = _errors(root)
    assert problem.startswith("bad.yaml:") and words in problem


@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("metadata: {name: 'web}\n", "2:1", "expected the quoted string that began at 1:18"),
        ("metadata:\n\tname: web\n", "2:1", "a tab character; expected spaces"),
        ("a: 1\n\tb: 2\n", "2:1", "a tab character; expected spaces"),
        ("nodes: [a, b\nc: 1\n", "2:2", "expected ',' or ']', in the [ list that began at 1:8"),
        ("a:\n  b: 1\n c: 2\n", "3:2", "expected key, in the mapping that began at 1:1"),
        ("a: b: c\n", "1:5", "mapping values are not allowed in this context"),
    ],
    ids=[
        "unclosed quote",
        "tab indent",
        "tab after a line",
        "unclosed list",
        "indentation",
        "a: b: c",
    ],
)
def test_a_syntax_error_says_what_was_being_read_and_where_it_began(
    text: str, where: str, words: str
) -> None:
    with pytest.raises(YamlError) as caught:
        parse_documents(text.encode())
    assert str(caught.value).startswith(f"{where}: invalid YAML: ")
    assert words in str(caught.value)


def test_utf16_with_a_byte_order_mark_is_read(write_repo: WriteRepo) -> None:
    root = write_repo({})
    (root / "web.yaml").write_bytes(WEB.encode("utf-16"))
    assert set(load_spec(root).nodes) == {"web"}


def test_the_settings_file_goes_through_the_same_boundary(write_repo: WriteRepo) -> None:
    root = write_repo({})
    (root / "gitops-nodes.yaml").write_bytes(b"runtime: \xff\xfe docker\n")
    with pytest.raises(SpecErrors, match=r"gitops-nodes.yaml:1:\d+: invalid YAML"):
        load_settings(root)
    (root / "gitops-nodes.yaml").unlink()
    os.mkfifo(root / "gitops-nodes.yaml")
    with pytest.raises(SpecErrors, match=r"gitops-nodes\.yaml: a FIFO"):
        load_settings(root)


# -- special files, links, permissions, size ----------------------------------------------


def test_a_fifo_named_like_yaml_is_an_error_not_a_hang(write_repo: WriteRepo) -> None:
    root = write_repo({"web.yaml": WEB})
    os.mkfifo(root / "pipe.yaml")
    assert _errors(root) == [
        "pipe.yaml: a FIFO (named pipe), not a regular file; gitops-nodes reads only regular "
        "files and folders"
    ]


def test_a_spec_link_leading_out_of_the_repo_is_not_read(
    write_repo: WriteRepo, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text(WEB)
    root = write_repo({})
    (root / "out.yaml").symlink_to(outside)
    (problem,) = _errors(root)
    assert problem.startswith("out.yaml: leads outside the repository")


def test_links_inside_the_repo_are_listed_as_ignored_and_loops_are_errors(
    write_repo: WriteRepo,
) -> None:
    root = write_repo({"web.yaml": WEB})
    (root / "also.yaml").symlink_to("web.yaml")
    desired = load_spec(root)
    assert [(i.path, i.reason) for i in desired.ignored] == [
        ("also.yaml", "a symbolic link (to web.yaml): read where it points")
    ]
    (root / "loop.yaml").symlink_to("loop.yaml")
    (root / "gone.yaml").symlink_to("nothing-here.yaml")
    assert _errors(root) == [
        "gone.yaml: a symbolic link to a path that does not exist",
        "loop.yaml: a symbolic link that loops",
    ]


def test_an_unreadable_folder_is_an_error_naming_it(
    write_repo: WriteRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tests run as root, whom permissions do not stop: the refusal is simulated.
    root = write_repo({"web.yaml": WEB, "locked/a.yaml": WEB})
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> Iterator[os.DirEntry[str]]:
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # the module repofiles lists folders with
    (problem,) = _errors(root)
    assert problem.startswith("locked: cannot read this folder: permission denied")


def test_a_file_over_the_size_limit_is_refused_unread_and_fast(
    write_repo: WriteRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repofiles, "MAX_FILE_SIZE", 1024 * 1024)
    root = write_repo({"web.yaml": WEB})
    with (root / "data.yaml").open("wb") as handle:
        handle.truncate(5 * 1024 * 1024)  # sparse: no time spent writing it
    started = time.monotonic()
    (problem,) = _errors(root)
    assert time.monotonic() - started < 5
    assert problem == (
        "data.yaml: 5.0 MiB, over the 1 MiB a spec file may have; if it is not spec, "
        "list it in .gitops-nodes-ignore"
    )


# -- the ignore file ------------------------------------------------------------------------


def test_the_ignore_file_keeps_files_and_folders_out_and_says_so(write_repo: WriteRepo) -> None:
    root = write_repo(
        {
            "web.yaml": WEB,
            "charts/values.yaml": "{{ not yaml at all",
            "data/train.yaml": "- [1, 2",
            "notes.yaml": "just: words",
            ".gitops-nodes-ignore": "# data and charts\ncharts/\n/data\n",
        }
    )
    desired = load_spec(root)
    assert set(desired.nodes) == {"web"}
    assert [(i.path, i.reason) for i in desired.ignored] == [
        ("charts/", "matched by .gitops-nodes-ignore line 2 (charts/)"),
        ("data/", "matched by .gitops-nodes-ignore line 3 (/data)"),
        (
            "notes.yaml",
            "not gitops-nodes documents: no kind: Node or Alias, no apiVersion: gitops-nodes/v1",
        ),
    ]


def test_files_that_are_not_ours_are_listed_with_why(write_repo: WriteRepo) -> None:
    root = write_repo(
        {
            "web.yaml": WEB,
            "list.yaml": "- a\n- b\n",
            "typo.yaml": "kind: Nod\nmetadata: {name: x}\n",
            "k8s.yaml": "apiVersion: apps/v1\nkind: Deployment\n",
        }
    )
    reasons = {i.path: i.reason for i in load_spec(root).ignored}
    assert reasons == {
        "k8s.yaml": "apiVersion 'apps/v1' is not gitops-nodes/v1, kind 'Deployment'",
        "list.yaml": "a list, not gitops-nodes documents (mappings with kind: Node or Alias)",
        "typo.yaml": "kind 'Nod' is neither Node nor Alias, and no apiVersion: gitops-nodes/v1",
    }


def test_validate_prints_what_it_left_out(
    write_repo: WriteRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_repo({"web.yaml": WEB, "list.yaml": "- a\n"})
    assert main(["validate", str(root)]) == 0
    out = capsys.readouterr().out
    assert "Not read as spec (1 path):\n  list.yaml: a list" in out


# -- build folders --------------------------------------------------------------------------


def _app(root: Path) -> Path:
    app = root / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "Dockerfile").write_text("FROM scratch\n")
    return app


def test_a_build_folder_digest_honours_dockerignore(tmp_path: Path) -> None:
    app = _app(tmp_path)
    (app / "README.md").write_text("one")
    (app / "docs").mkdir()
    (app / "docs" / "guide.md").write_text("one")
    (app / ".dockerignore").write_text("*.md\n")
    before = context_digest(app, "Dockerfile")
    (app / "README.md").write_text("two")  # excluded: `*.md` matches at the root only
    assert context_digest(app, "Dockerfile") == before
    (app / "docs" / "guide.md").write_text("two")  # not excluded by `*.md`
    assert context_digest(app, "Dockerfile") != before


def test_dockerignore_matches_as_docker_does() -> None:
    rules = DockerIgnore("# c\n**/*.log\ndata\n!data/keep.csv\n/tmp/*\nsub?/x\n")
    assert rules.excluded("a/b/c.log") and rules.excluded("c.log")
    assert rules.excluded("data/big.csv") and not rules.excluded("data/keep.csv")
    assert rules.excluded("tmp/x") and not rules.excluded("tmp")
    assert rules.excluded("sub1/x") and not rules.excluded("sub12/x")
    assert not rules.excluded("app.py")


def test_links_in_a_build_folder_are_hashed_as_links_never_followed(tmp_path: Path) -> None:
    app = _app(tmp_path)
    (app / "zero").symlink_to("/dev/zero")  # following it would never end
    (app / "secret").symlink_to("/etc/shadow")
    (app / "loop").symlink_to("loop")
    (app / "gone").symlink_to("nothing")
    started = time.monotonic()
    first = context_digest(app, "Dockerfile")
    assert time.monotonic() - started < 5
    (app / "secret").unlink()
    (app / "secret").symlink_to("/etc/passwd")
    assert context_digest(app, "Dockerfile") != first


def test_a_fifo_in_a_build_folder_is_an_error_naming_it(write_repo: WriteRepo) -> None:
    root = write_repo({"built.yaml": BUILT})
    os.mkfifo(_app(root) / "pipe")
    (problem,) = _errors(root)
    assert problem.startswith("built.yaml:7:12: spec.image.build: app/pipe: a FIFO (named pipe)")
    assert "list it in .dockerignore" in problem
    (root / "app" / ".dockerignore").write_text("pipe\n")
    assert set(load_spec(root).nodes) == {"built"}


def test_a_build_folder_that_is_a_link_loop_is_an_error(write_repo: WriteRepo) -> None:
    root = write_repo({"built.yaml": BUILT})
    (root / "app").symlink_to("app")
    (problem,) = _errors(root)
    assert "spec.image.build" in problem and "symbolic link loop" in problem


def test_a_key_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "key")
    access = Access.model_validate({"keys": [{"name": "ci", "fromFile": str(tmp_path / "key")}]})
    rule, problems = resolve_access(access, {})
    assert rule is None
    assert "is not a regular file" in problems[0][1]


# -- the cache --------------------------------------------------------------------------------


def test_a_new_checkout_of_an_unchanged_file_hits_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    original = load_module._parse_file

    def counting(root: Path, relative: str, data: bytes) -> object:
        parsed.append(relative)
        return original(root, relative, data)

    monkeypatch.setattr(load_module, "_parse_file", counting)
    loader = SpecLoader()
    for checkout in ("a1", "b2"):  # as watch checks each commit out into its own folder
        folder = tmp_path / "checkouts" / checkout
        folder.mkdir(parents=True)
        (folder / "web.yaml").write_text(WEB)
        (folder / "api.yaml").write_text(WEB.replace("web", "api" if checkout == "b2" else "x"))
        loader.load(folder)
    assert parsed == ["api.yaml", "web.yaml", "api.yaml"]


def test_the_cache_stays_under_its_bound(tmp_path: Path) -> None:
    for index in range(40):
        (tmp_path / f"n{index}.yaml").write_text(WEB.replace("web", f"n{index}"))
    size = len(WEB) + 2
    loader = SpecLoader(max_bytes=10 * size)
    loader.load(tmp_path)
    assert 0 < loader.cached_bytes <= 10 * size
    for index in range(40):  # every file changes: new entries, old ones must go
        (tmp_path / f"n{index}.yaml").write_text(WEB.replace("web", f"m{index}"))
    loader.load(tmp_path)
    assert 0 < loader.cached_bytes <= 10 * size


def test_the_cache_keeps_only_the_last_two_loads_files(tmp_path: Path) -> None:
    """A file that changes in every commit (alias weights) must not grow the cache commit by
    commit: what neither of the last two loads read is dropped, far below the byte bound."""
    (tmp_path / "web.yaml").write_text(WEB)
    loader = SpecLoader()
    sizes = []
    for index in range(20):
        (tmp_path / "api.yaml").write_text(WEB.replace("web", f"api{index:02d}"))
        loader.load(tmp_path)
        sizes.append(loader.cached_bytes)
    web, api = (len((tmp_path / name).read_bytes()) for name in ("web.yaml", "api.yaml"))
    # web.yaml and the api.yaml of the last two loads, from the second load on.
    assert sizes[1:] == [web + 2 * api] * 19


@pytest.mark.parametrize("first_line", ["# plain ASCII\n", "# café, not ASCII\n"])
def test_a_problem_deep_in_a_long_file_gets_its_own_line(
    write_repo: WriteRepo, first_line: str
) -> None:
    documents = [WEB.replace("name: web", f"name: n{i}") for i in range(50)]
    documents[37] += "  instances: 0\n"
    root = write_repo({})
    (root / "many.yaml").write_text(first_line + "---\n".join(documents))
    line = 1 + 37 * 9 + 9  # the comment, 37 documents of 8 lines and a `---`, then line 9
    assert _errors(root) == [f"many.yaml:{line}:14: spec.instances: expected a value ≥ 1, got 0"]


def test_a_folder_without_links_or_ignores_keeps_the_digest_it_always_had(tmp_path: Path) -> None:
    app = _app(tmp_path)
    (app / "a").mkdir()
    for relative, text in {"a.txt": "1", "a/b": "2", "a-b": "3", "run.sh": "#!/bin/sh\n"}.items():
        (app / relative).write_text(text)
    (app / "run.sh").chmod(0o755)
    # The digest as computed before .dockerignore and links were honoured: an image tag that
    # changed here would rebuild and replace every built node on upgrade.
    expected = hashlib.sha256(b"dockerfile=Dockerfile\0")
    for path in sorted(p for p in app.rglob("*") if p.is_file()):
        relative = path.relative_to(app).as_posix()
        expected.update(f"{relative}\0{int(os.access(path, os.X_OK))}\0".encode())
        expected.update(path.read_bytes() + b"\0")
    assert context_digest(app, "Dockerfile") == expected.hexdigest()
