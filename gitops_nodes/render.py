"""Plans as people read them, rendered from the same JSON that `plan --json` prints."""

from __future__ import annotations

import json
from typing import Any

_TITLES = {
    "+": "will be created",
    "~": "will be updated in place",
    "-": "will be destroyed",
    "-/+": "must be replaced",
}
_LEGEND = {
    "+": "  + create",
    "~": "  ~ update in place",
    "-": "  - destroy",
    "-/+": "-/+ replace (the new instances are created before the old ones are removed)",
}
_TRANSITION_TITLES = {"suspend": "will be suspended", "resume": "will be resumed"}
_TRANSITION_LEGEND = {
    "suspend": "  ~ suspend (instances stopped and kept; definition, image and aliases kept)",
    "resume": "  ~ resume (the stopped instances start again)",
}


def render_text(plan: dict[str, Any]) -> str:
    """Terraform's habit: a legend, each change with the fields that differ, then a count."""
    changes = plan["changes"]
    head = _sources_text(plan)
    if not changes:
        return head + "No changes. The live state matches the spec.\n" + _left_alone_text(plan)
    present = [glyph for glyph in _LEGEND if any(c["action"] == glyph for c in changes)]
    moves = [t for t in _TRANSITION_LEGEND if any(c.get("transition") == t for c in changes)]
    lines = [
        "gitops-nodes uses these symbols:",
        *(_LEGEND[g] for g in present),
        *(_TRANSITION_LEGEND[t] for t in moves),
        "",
    ]
    lines.append("gitops-nodes will perform the following actions:")
    for change in changes:
        lines.append("")
        lines.extend(_change_lines(change))
    summary = plan["summary"]
    lines.append("")
    lines.append(
        f"Plan: {summary['add']} to add, {summary['change']} to change, "
        f"{summary['destroy']} to destroy."
    )
    return head + "\n".join(lines) + "\n" + _left_alone_text(plan)


def _sources_text(plan: dict[str, Any]) -> str:
    """What the nodes' model sources resolved to, and the version warnings, before the plan."""
    lines = []
    sources = plan.get("sources") or []
    if sources:
        lines.append("Model sources:")
        lines.extend(
            f"  {s['node']} {s['field']}: {s['source']} → {s['resolved']}"
            + (" (fetched now)" if s.get("fetched") else "")
            for s in sources
        )
        lines.append("")
    warnings = plan.get("warnings") or []
    if warnings:
        lines.append("Warnings:")
        lines.extend(f"  ! {warning}" for warning in warnings)
        lines.append("")
    return "\n".join(lines) + "\n" if lines else ""


def _left_alone_text(plan: dict[str, Any]) -> str:
    """The project's containers the plan leaves alone, each with why."""
    left = plan.get("leftAlone") or []
    if not left:
        return ""
    lines = ["", "Left alone (not this state directory's):"]
    lines.extend(
        f"  container {item['instance']} (node {item['node']}, instance {item['index']}): "
        f"{item['reason']}"
        for item in left
    )
    return "\n".join(lines) + "\n"


def _change_lines(change: dict[str, Any]) -> list[str]:
    action = change["action"]
    kind = change["kind"]
    title = _TRANSITION_TITLES.get(change.get("transition") or "", _TITLES[action])
    lines = [f"  # {kind} {change['name']} {title} ({change['reason']})"]
    lines.append(f'{action:>3} {kind.lower()} "{change["name"]}" {{')
    fields = change["fields"]
    width = max((len(f["field"]) for f in fields), default=0)
    for item in fields:
        if action == "+" and item["after"] is None:
            continue  # unset on a new node: noise (terraform 28803)
        lines.append("      " + _field_line(action, item, width))
    maintenance = change.get("maintenance")
    batches = len(maintenance["batches"]) if maintenance else 0
    for instance in change.get("instances", ()):
        if action in ("+", "-"):
            continue
        old = f" {instance['old']}" if instance["old"] else ""
        glyph = instance["action"]
        if glyph in ("suspend", "resume", "adopt"):
            glyph = f"  ~ {glyph}"
        batch = f" [batch {instance['batch']} of {batches}]" if "batch" in instance else ""
        lines.append(
            f"    {glyph:>3} instance {instance['index']}{old} ({instance['reason']}){batch}"
        )
    if maintenance:
        limit = maintenance["limit"]
        plural = "es" if batches != 1 else ""
        lines.append(
            f"      # maintenanceLimit {limit}: replaced {limit} at a time, "
            f"in {batches} batch{plural}"
        )
    if change.get("build"):
        lines.append(f"      + build image {change['build']} (no image of it exists yet)")
    lines.append("    }")
    return lines


def _field_line(action: str, item: dict[str, Any], width: int) -> str:
    name = item["field"].ljust(width)
    before, after = item["before"], item["after"]
    if before is None and action != "-":
        return f"+ {name} = {_value(after)}"
    if after is None:
        return f"- {name} = {_value(before)}" + (" -> null" if action != "-" else "")
    note = " # forces replacement" if item["forcesReplacement"] else ""
    return f"~ {name} = {_value(before)} -> {_value(after)}{note}"


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_json(plan: dict[str, Any]) -> str:
    return json.dumps(plan, indent=2, sort_keys=False) + "\n"
