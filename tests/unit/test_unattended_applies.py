"""The project's own scripts apply unattended: every `gitops-nodes apply` they run passes
--auto-approve or applies a saved plan, so none stops at the terminal's question."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_scripted_apply_is_auto_approved_or_a_saved_plan() -> None:
    found = []
    for path in sorted([*(ROOT / "scripts").rglob("*"), *(ROOT / "benchmarks").rglob("*.py")]):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        # A shell line, or a Python argument list (possibly over several lines).
        for match in re.finditer(r"gitops-nodes apply[^\n]*|[\"']apply[\"'],[^)]*", text):
            found.append((path.relative_to(ROOT), match.group(0)))
    assert found, "the search finds scripts/up's apply at least"
    for path, call in found:
        assert "--auto-approve" in call or "plan.json" in call, f"{path}: {call!r}"
