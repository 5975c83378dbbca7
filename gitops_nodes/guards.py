"""Changes gitops-nodes refuses to make unless told to: pure checks of a plan and its states.

- An empty spec (no Node, no Alias) while the project has live nodes is almost always a
  mistake (files moved, a bad merge, the wrong `--path`), and applying it would destroy
  everything: plan, apply and watch refuse it unless `--allow-empty` (plan, apply) or
  `allowEmpty: true` (the repo's gitops-nodes.yaml, for watch) says it is meant.
- watch, which applies whatever is pushed with nobody watching, refuses a revision whose plan
  destroys more than `destroyBudget` percent of the live nodes (50 by default; one node may
  always go, so replacing the only node with a renamed one passes).
"""

from __future__ import annotations

from gitops_nodes.diff import Action
from gitops_nodes.errors import GitopsNodesError
from gitops_nodes.live import LiveState
from gitops_nodes.plan import Plan
from gitops_nodes.spec.state import DesiredState


class Refused(GitopsNodesError):
    """A change that gitops-nodes makes only when told that it is meant."""


def live_nodes(live: LiveState) -> list[str]:
    return sorted(live.node_names())


def check_not_empty(desired: DesiredState, live: LiveState, allow: str) -> None:
    """Refuse an empty spec while the project has live nodes; allow says how to mean it."""
    if desired.nodes or desired.aliases:
        return
    nodes = live_nodes(live)
    if not nodes:
        return
    shown = ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
    raise Refused(
        f"the spec in {desired.root} has no Node or Alias document, but project "
        f"{live.project} has {len(nodes)} live node{'s' if len(nodes) != 1 else ''} ({shown}): "
        f"applying it would destroy every one. Nothing was changed. If the repository is "
        f"meant to be empty, {allow}; `gitops-nodes destroy` removes everything at once."
    )


def check_destroy_budget(plan: Plan, live: LiveState, percent: int) -> None:
    """Refuse a plan that destroys more than percent of the live nodes (one always may go)."""
    nodes = live_nodes(live)
    destroyed = sorted(c.name for c in plan.diff.nodes if c.action is Action.DELETE)
    allowed = max(1, len(nodes) * percent // 100)
    if len(destroyed) <= allowed:
        return
    shown = ", ".join(destroyed[:5]) + (
        f" and {len(destroyed) - 5} more" if len(destroyed) > 5 else ""
    )
    raise Refused(
        f"this revision destroys {len(destroyed)} of the {len(nodes)} live nodes ({shown}), "
        f"over the destroy budget of {percent}% ({allowed} node{'s' if allowed != 1 else ''}). "
        "Nothing was changed. If it is meant, raise `destroyBudget` (percent, 100 for no "
        "limit) in the repository's gitops-nodes.yaml, or apply it with `gitops-nodes apply`."
    )
