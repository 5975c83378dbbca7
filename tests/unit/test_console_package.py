"""The web console's files ship wherever the balancer goes: in the Python package (package
data) and in the Swarm balancer's image (which copies the package's files itself)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import balancer
from gitops_nodes.runtime.balancer_image import source_files

ROOT = Path(__file__).parents[2]
STATIC = Path(balancer.__file__).parent / "console" / "static"


def test_every_console_file_is_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["balancer.console"]
    files = sorted(p.relative_to(STATIC.parent).as_posix() for p in STATIC.iterdir())
    assert {"static/index.html", "static/login.html", "static/console.js"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_the_swarm_balancer_image_carries_the_console() -> None:
    files = {path.as_posix() for path in source_files()}
    assert {"server.py", "control.py", "console/__init__.py", "console/traffic.py"} <= files
    assert {f"console/static/{p.name}" for p in STATIC.iterdir()} <= files
    assert not any("__pycache__" in name for name in files)
