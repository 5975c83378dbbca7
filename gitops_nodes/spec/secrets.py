"""Reads a node's secret values (env entries and secretFiles) and digests them with a key.

A secret is read where gitops-nodes runs, on every load (so a rotation is noticed): from its
environment, a file outside the repository, or a SOPS-encrypted file of the repository
(spec/sops.py). Only an HMAC-SHA256 of each value, keyed with a random key kept in the
state directory, leaves the desired state's values for plans, labels and the spec hash: a
rotation changes the digest (and so rolls the node), and a label cannot be used to guess a
value offline without that key. The values themselves travel to the runtime in
`NodeSecrets`, whose repr shows none of them. A secret that cannot be read is a spec problem
at the field naming its source; no message includes a value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gitops_nodes.spec.access import environment_variable
from gitops_nodes.spec.models import MAX_ENV_VALUE, NodeSpec, SecretSource
from gitops_nodes.spec.sops import SopsFiles, SopsProblem

Loc = tuple[str | int, ...]
DigestKey = Callable[[], bytes]  # the state directory's key, read (or made) when first needed
# A secret file's largest size: what a Docker secret on a Swarm may hold (500 KiB).
MAX_SECRET_FILE = 500 * 1024
_DIGEST_CONTEXT = b"gitops-nodes/secret/v1\0"


@dataclass(frozen=True)
class SecretValue:
    """A secret's bytes; neither its repr nor its str shows them."""

    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "SecretValue(<sensitive>)"

    __str__ = __repr__

    def text(self) -> str:
        return self.data.decode()


@dataclass(frozen=True)
class NodeSecrets:
    """A node's secret values by where they go: env names, and file paths in the container."""

    env: tuple[tuple[str, SecretValue], ...] = ()
    files: tuple[tuple[str, SecretValue], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.env or self.files)


NO_SECRETS = NodeSecrets()


def secret_digest(key: bytes, value: bytes) -> str:
    """The keyed digest that stands for a secret value in labels, plans and the spec hash."""
    return hmac.new(key, _DIGEST_CONTEXT + value, hashlib.sha256).hexdigest()


def has_secrets(spec: NodeSpec) -> bool:
    return bool(spec.secret_files) or any(isinstance(v, SecretSource) for v in spec.env.values())


@dataclass(frozen=True)
class ResolvedSecrets:
    """A node's secrets read: the values, and (name or path, digest) pairs for its config."""

    values: NodeSecrets
    env_digests: tuple[tuple[str, str], ...]
    file_digests: tuple[tuple[str, str], ...]


def _sources(spec: NodeSpec) -> Iterator[tuple[Loc, str, SecretSource, bool]]:
    """Each secret the node names: its field's path, its env name or file path, its
    source, and whether it becomes a file."""
    for name, entry in sorted(spec.env.items()):
        if isinstance(entry, SecretSource):
            yield ("spec", "env", name, entry.field), name, entry, False
    for path, entry in sorted(spec.secret_files.items()):
        yield ("spec", "secretFiles", path, entry.field), path, entry, True


def resolve_secrets(
    spec: NodeSpec,
    environ: Mapping[str, str],
    sops: SopsFiles,
    key: DigestKey,
) -> tuple[ResolvedSecrets | None, list[tuple[Loc, str]]]:
    """Read every secret the node names; the problems (field path under the document,
    message) when any cannot be read, and then no secrets at all."""
    problems: list[tuple[Loc, str]] = []
    env: list[tuple[str, SecretValue]] = []
    files: list[tuple[str, SecretValue]] = []
    for loc, name, entry, as_file in _sources(spec):
        data, trouble = _read(entry, environ, sops, as_file=as_file)
        if trouble is not None or data is None:
            problems.append((loc, trouble or "no value"))
        else:
            (files if as_file else env).append((name, SecretValue(data)))
    if problems:
        return None, problems
    digest_key = key() if env or files else b""
    return (
        ResolvedSecrets(
            NodeSecrets(tuple(env), tuple(files)),
            tuple((name, secret_digest(digest_key, value.data)) for name, value in env),
            tuple((path, secret_digest(digest_key, value.data)) for path, value in files),
        ),
        [],
    )


def check_secret_files(spec: NodeSpec, sops: SopsFiles) -> list[tuple[Loc, str]]:
    """Without keys: each fromSecret names a key of an encrypted secrets file in the
    repository (environment variables and files outside it are the runner's, not checked)."""
    problems: list[tuple[Loc, str]] = []
    for loc, _, entry, _ in _sources(spec):
        if entry.from_secret is None:
            continue
        try:
            sops.check(entry.from_secret)
        except SopsProblem as exc:
            problems.append((loc, str(exc)))
    return problems


def _read(
    source: SecretSource, environ: Mapping[str, str], sops: SopsFiles, as_file: bool
) -> tuple[bytes | None, str | None]:
    limit = MAX_SECRET_FILE if as_file else MAX_ENV_VALUE * 4  # bytes; checked as text below
    if source.from_env is not None:
        where = environment_variable(source.from_env)  # a value pasted there is not echoed
        text = environ.get(source.from_env)
        if text is None:
            return None, f"{where} is not set; set it where gitops-nodes runs"
        data = text.encode()
    elif source.from_file is not None:
        read, trouble = _read_file(Path(source.from_file), limit)
        if trouble is not None or read is None:
            return None, trouble
        data = read
        if not as_file:
            data = data.removesuffix(b"\n").removesuffix(b"\r")  # what `echo x > file` adds
        where = f"the file {source.from_file}"
    else:
        assert source.from_secret is not None  # the model requires exactly one source
        try:
            data = sops.value(source.from_secret).encode()
        except SopsProblem as exc:
            return None, str(exc)
        where = f"the secret {source.from_secret}"
    if not data:
        return None, f"{where} is empty; expected a secret value"
    if as_file:
        if len(data) > MAX_SECRET_FILE:
            return None, f"{where} is over {MAX_SECRET_FILE // 1024} KiB, a secret file's limit"
        return data, None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None, f"{where} is not UTF-8 text; an environment value must be"
    if "\0" in text:
        return None, f"{where} holds a NUL character; an environment value cannot"
    if len(text) > MAX_ENV_VALUE:
        return None, f"{where} is over {MAX_ENV_VALUE} characters, an env value's limit"
    return data, None


def _read_file(path: Path, limit: int) -> tuple[bytes | None, str | None]:
    # As access keys' files: opened without blocking, a regular file only (links to one are
    # followed: secrets often live behind /run/secrets links), read no further than a value
    # can be, so a FIFO or /dev/zero named by mistake is refused rather than waited on.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return None, f"cannot read the file {path}: {exc.strerror or type(exc).__name__}"
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None, f"the file {path} is not a regular file; expected a file holding a secret"
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(descriptor, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        return None, f"cannot read the file {path}: {exc.strerror or type(exc).__name__}"
    finally:
        os.close(descriptor)
    data = b"".join(chunks)
    if len(data) > limit:
        return None, f"the file {path} is over {limit // 1024} KiB"
    return data, None
