"""The balancer's modules import one another without a cycle, so each can be read alone.

Every `import balancer.x` / `from balancer.x import ...` counts, including those under
`if TYPE_CHECKING:` (a cycle a type checker needs is still a cycle for a reader).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "balancer"
MODULES = sorted(f"balancer.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def imports_of(module: str) -> set[str]:
    """The balancer modules that module imports, anywhere in its text."""
    path = PACKAGE / f"{module.split('.')[1]}.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES)
    return found - {module}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of graph, as the path that closes it; None when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                return [*path[path.index(other) :], other]
            if other not in state and (found := visit(other)) is not None:
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)) is not None:
            return found
    return None


def test_the_balancer_has_no_import_cycle() -> None:
    graph = {module: imports_of(module) for module in MODULES}
    # the parts of the data plane meet in types.py, not in one another
    assert "balancer.client" not in graph["balancer.execute"] | graph["balancer.proxy"]
    assert "balancer.upstream" not in graph["balancer.proxy"]
    assert cycle_in(graph) is None, " -> ".join(cycle_in(graph) or [])


def test_the_check_finds_a_cycle() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set()}) is None


def test_each_module_imports_alone() -> None:
    # One interpreter (the third-party packages load once), the balancer forgotten before
    # each module: a module that only imports after another one fails here.
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'balancer']:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
