"""Installing wheels into a python node's image: unpacked, with their .data parts spread."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from gitops_nodes.pynode import wheels


def make_wheel(folder: Path) -> Path:
    """A wheel with a package at its root and code, a script and headers in its .data."""
    path = folder / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("demo/__init__.py", "from extra import VALUE\n")
        archive.writestr("demo-1.0.dist-info/METADATA", "Name: demo\nVersion: 1.0\n")
        archive.writestr("demo-1.0.data/purelib/extra.py", "VALUE = 'from purelib'\n")
        archive.writestr("demo-1.0.data/platlib/native/__init__.py", "")
        archive.writestr("demo-1.0.data/scripts/demo-tool", "#!/bin/sh\necho tool\n")
        archive.writestr("demo-1.0.data/headers/demo.h", "/* header */\n")
    return path


def test_data_parts_go_where_they_belong(tmp_path: Path) -> None:
    site, scripts = tmp_path / "site", tmp_path / "bin"
    assert wheels.main([str(site), str(scripts), str(make_wheel(tmp_path))]) == 0

    assert (site / "demo" / "__init__.py").is_file()
    assert (site / "extra.py").read_text() == "VALUE = 'from purelib'\n"
    assert (site / "native" / "__init__.py").is_file()
    tool = scripts / "demo-tool"
    assert tool.is_file() and os.access(tool, os.X_OK)
    assert not (site / "demo-1.0.data" / "purelib").exists()
    assert not (site / "demo-1.0.data" / "scripts").exists()
    assert (site / "demo-1.0.data" / "headers" / "demo.h").is_file()  # left where it unpacked

    imported = subprocess.run(
        [sys.executable, "-c", "import demo; print(demo.VALUE)"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout == "from purelib\n"


def test_a_wheel_without_data_is_only_unpacked(tmp_path: Path) -> None:
    path = tmp_path / "plain-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("plain.py", "X = 1\n")
    site, scripts = tmp_path / "site", tmp_path / "bin"
    assert wheels.main([str(site), str(scripts), str(path)]) == 0
    assert sorted(p.name for p in site.iterdir()) == ["plain.py"]
    assert list(scripts.iterdir()) == []


def test_usage_without_arguments_is_exit_2() -> None:
    assert wheels.main([]) == 2
