"""Writing a repository's files exactly as given (text or bytes, no dedent), for tests whose
inputs' every byte matters (line endings, encodings, odd names)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def write_files(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Write {relative path: content} under root, making folders; root returned."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root
