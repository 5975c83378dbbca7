"""Resolves a private node's or alias's keys, from where the spec says they are, into digests.

Keys are read where gitops-nodes runs (validate, plan, apply, watch), from its environment or
from files outside the repository, on every load (so a rotated key is noticed), and only
their SHA-256 leaves this module: the routing table never holds a key. A key that cannot be
read is a spec problem at the field that names its source; no message includes a key.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from balancer.access import MAX_KEY_LENGTH, key_digest, key_problem
from balancer.table import AccessKey, AccessRule
from gitops_nodes.spec.models import Access

Loc = tuple[str | int, ...]


def resolve_access(
    access: Access, environ: Mapping[str, str]
) -> tuple[AccessRule | None, list[tuple[Loc, str]]]:
    """The access rule with each key's digest, or the problems (field path under the
    document, message) that kept a key from being read."""
    keys: list[AccessKey] = []
    problems: list[tuple[Loc, str]] = []
    for position, source in enumerate(access.keys):
        if source.from_env is not None:
            field, where = "fromEnv", environment_variable(source.from_env)
            key, trouble = _from_env(source.from_env, where, environ)
        else:
            assert source.from_file is not None  # the model requires exactly one source
            field, where = "fromFile", f"the key file {source.from_file}"
            key, trouble = _from_file(Path(source.from_file))
        if key is not None and (weak := key_problem(key)) is not None:
            trouble = f"{where}: {weak}"
        if trouble is not None or key is None:
            problems.append((("spec", "access", "keys", position, field), trouble or "no key"))
            continue
        keys.append(AccessKey(source.name, key_digest(key)))
    if problems:
        return None, problems
    return AccessRule(tuple(keys), tuple(access.folders)), []


# A name is repeated in a message only when it has the shape environment variables are given
# by convention: upper-case words joined by '_', each of letters with perhaps a number after
# them, or a number (OPENAI_API_KEY, S3_BUCKET, DB2_HOST). The model admits any
# [A-Za-z_][A-Za-z0-9_]*, which keys fit too (sk_live_..., AKIAIOSFODNN7EXAMPLE, base32 or hex
# tokens): those mix cases, put digits between letters or run long, so they are never shown.
# A word is at most 15 characters, so no single word could be an access key (at least 16).
_SHOWN_WORD = re.compile(r"[A-Z]+[0-9]*|[0-9]+")
MAX_SHOWN_WORD = 15
MAX_SHOWN_ENV_NAME = 48


def environment_variable(name: str) -> str:
    """The environment variable a fromEnv field names, as messages refer to it: by its name
    when that looks like one, else without repeating it (a key may have been pasted there)."""
    words = name.split("_")
    if len(name) <= MAX_SHOWN_ENV_NAME and all(
        len(word) <= MAX_SHOWN_WORD and _SHOWN_WORD.fullmatch(word) for word in words
    ):
        return f"the environment variable {name}"
    return (
        f"the environment variable named in fromEnv ({len(name)} characters; not shown, as it "
        "is not an upper-case NAME_LIKE_THIS and may be a pasted key)"
    )


def _from_env(name: str, where: str, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    value = environ.get(name)
    if value is None:
        return None, f"{where} is not set; set it to the key where gitops-nodes runs"
    key = value.strip()
    if not key:
        return None, f"{where} is empty; expected a key"
    return key, None


def _from_file(path: Path) -> tuple[str | None, str | None]:
    # Opened without blocking and checked to be a regular file (links to one are followed:
    # keys often live behind /run/secrets links), then read only as far as a key can be, so a
    # FIFO, a device or /dev/zero named by mistake is refused rather than waited on.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return None, f"cannot read the key file {path}: {exc.strerror or type(exc).__name__}"
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None, f"the key file {path} is not a regular file; expected a file holding a key"
        data = os.read(descriptor, MAX_KEY_LENGTH + 64)  # a key, not whatever file was named
    except OSError as exc:
        return None, f"cannot read the key file {path}: {exc.strerror or type(exc).__name__}"
    finally:
        os.close(descriptor)
    try:
        key = data.decode().strip()
    except UnicodeDecodeError:
        return None, f"the key file {path} is not UTF-8 text; expected a key"
    if not key:
        return None, f"the key file {path} is empty; expected a key"
    return key, None
