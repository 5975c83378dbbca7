"""The balancer's Swarm image carries every package the balancer imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import balancer
from gitops_nodes.runtime.balancer_image import REQUIREMENTS


def imported_top_levels(package: Path) -> set[str]:
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_third_party_import_of_the_balancer_is_in_its_image() -> None:
    package = Path(balancer.__file__).parent
    third_party = imported_top_levels(package) - set(sys.stdlib_module_names) - {"balancer"}
    # The image is the balancer package and these wheels: an import not named here would
    # make the service's task exit at its first import (as orjson once did).
    missing = third_party - set(REQUIREMENTS) - {"__future__"}
    assert missing == set(), f"the balancer imports {sorted(missing)}; add them to REQUIREMENTS"
