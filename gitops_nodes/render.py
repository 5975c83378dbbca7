"""Plans as people read them, rendered from the same JSON that `plan --json` prints."""

from __future__ import annotations

import html
import json
import re
from typing import Any

# What every plan shows for a key or a secret; diff.Sensitive's text (render imports nothing
# heavier than json, so the constant lives here).
SENSITIVE_TEXT = "(sensitive value)"

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
    before, after = shown_value(item, "before"), shown_value(item, "after")
    if item["before"] is None and action != "-":
        return f"+ {name} = {after}"
    if item["after"] is None:
        return f"- {name} = {before}" + (" -> null" if action != "-" else "")
    note = " # forces replacement" if item["forcesReplacement"] else ""
    return f"~ {name} = {before} -> {after}{note}"


def shown_value(item: dict[str, Any], side: str) -> str:
    """A plan field's value ("before" or "after") as every rendering shows it: JSON text, or
    `(sensitive value)` for a field the plan marks sensitive (a key or a secret), whatever
    the value is. Every renderer (text, markdown, ...) formats values through this."""
    if item.get("sensitive"):
        return json.dumps(SENSITIVE_TEXT)
    return json.dumps(item[side], ensure_ascii=False)


def render_json(plan: dict[str, Any]) -> str:
    return json.dumps(plan, indent=2, sort_keys=False) + "\n"


# GitHub refuses a comment body past 65,536 characters; a CI job adds a marker and a title
# around the plan, so the plan keeps this much room for them.
COMMENT_LIMIT = 65_536
COMMENT_RESERVE = 1_024
_GLYPH_FIRST = re.compile(r"^( +)([-+])(?=\s)", re.MULTILINE)


def render_markdown(plan: dict[str, Any], limit: int = COMMENT_LIMIT - COMMENT_RESERVE) -> str:
    """A plan for a pull-request comment: the summary line first, then one collapsible
    section per node and alias holding the same lines the text plan shows; past `limit`
    characters the sections that do not fit are left out and a note says so."""
    changes = plan["changes"]
    project = plan["project"]  # a state folder's name: letters, digits and _.- only
    if changes:
        summary = plan["summary"]
        head = (
            f"**Plan:** {summary['add']} to add, {summary['change']} to change, "
            f"{summary['destroy']} to destroy. (gitops-nodes project `{project}`)\n"
        )
    else:
        head = (
            f"**No changes.** The live state matches the spec. (gitops-nodes project `{project}`)\n"
        )
    sections = [_markdown_section(change) for change in changes]
    extras = _markdown_extras(plan)
    body = head + "".join(sections) + "".join(extras)
    if len(body) <= limit:
        return body
    shown = head
    count = 0
    for section in sections:
        if len(shown) + len(section) + len(_truncated_note(count + 1, len(sections))) > limit:
            break
        shown += section
        count += 1
    note = _truncated_note(count, len(sections))
    for extra in extras:  # the short lists after the changes, when they still fit
        if len(shown) + len(extra) + len(note) <= limit:
            shown += extra
    return shown + note


def _truncated_note(shown: int, total: int) -> str:
    return (
        f"\n> **The plan is too long for one comment:** {shown} of {total} changes are shown "
        "above. The whole plan is in the job's log (`gitops-nodes plan`).\n"
    )


def _markdown_section(change: dict[str, Any]) -> str:
    """One node's or alias's change: a one-line summary that opens onto its text lines."""
    action = change["action"]
    title = _TRANSITION_TITLES.get(change.get("transition") or "", _TITLES[action])
    forcing = [f["field"] for f in change["fields"] if f["forcesReplacement"]]
    forces = (
        " — " + ", ".join(f"<code>{_escape(f)}</code>" for f in forcing) + " forces replacement"
        if forcing
        else ""
    )
    summary = (
        f"<code>{_escape(action)}</code> {change['kind']} <b>{_escape(change['name'])}</b>"
        f" {title} ({_escape(change['reason'])}){forces}"
    )
    return _details(summary, "\n".join(_change_lines(change)))


def _markdown_extras(plan: dict[str, Any]) -> list[str]:
    """The containers left alone and the files not read as spec, as in the text plan."""
    extras = []
    left = plan.get("leftAlone") or []
    if left:
        extras.append(
            _details(
                f"Left alone: {len(left)} container(s) not this state directory's",
                _left_alone_text(plan).strip("\n"),
                language="",
            )
        )
    ignored = plan.get("ignoredFiles") or []
    if ignored:
        lines = "\n".join(f"{item['path']}: {item['reason']}" for item in ignored)
        extras.append(_details(f"Not read as spec: {len(ignored)} path(s)", lines, language=""))
    return extras


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def _details(summary: str, text: str, language: str = "diff") -> str:
    """A collapsible block around a code block; the glyphs lead their lines so a diff block
    colours them, and the fence outgrows any backticks inside the text."""
    if language == "diff":
        text = _GLYPH_FIRST.sub(r"\2\1", text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return (
        f"\n<details><summary>{summary}</summary>\n\n"
        f"{fence}{language}\n{text}\n{fence}\n\n</details>\n"
    )
