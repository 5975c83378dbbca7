"""The dependency rules of DESIGN.md: pure logic never loads Docker or Starlette, and the
balancer never imports gitops_nodes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = ["gitops_nodes.spec.load", "gitops_nodes.diff", "gitops_nodes.plan", "gitops_nodes.render"]
FORBIDDEN = ["docker", "starlette"]


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_pure_modules_load_neither_docker_nor_starlette() -> None:
    loaded = _loaded_after_import(PURE)

    assert set(PURE) <= loaded
    heavy = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert heavy == [], f"importing {PURE} loaded {heavy}"


def test_the_check_would_notice_docker() -> None:
    # the probe itself works: a module that does use the Docker SDK shows up (the SDK is a
    # dependency of the project: when it is missing this fails, it does not skip)
    assert "docker" in _loaded_after_import(["docker"])


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


BALANCER_FILES = sorted((ROOT / "balancer").rglob("*.py"))


def test_balancer_has_modules() -> None:
    assert ROOT / "balancer" / "table.py" in BALANCER_FILES


@pytest.mark.parametrize(
    "path", BALANCER_FILES, ids=[p.relative_to(ROOT).as_posix() for p in BALANCER_FILES]
)
def test_balancer_never_imports_gitops_nodes(path: Path) -> None:
    offending = sorted(m for m in _imported_modules(path) if m.split(".")[0] == "gitops_nodes")
    assert offending == [], f"{path.relative_to(ROOT)} imports {offending}"
