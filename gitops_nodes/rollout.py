"""Progressive delivery: the weights an alias passes through on its way to new ones. Pure.

A rollout moves each node's *share* of the alias's requests linearly from the published
split to the spec's, one step at a time (say 10%, 50% of the way, then all of it), so an
alias moving from v1 to v2 with steps [10, 50] serves v1=90/v2=10, then 50/50, then v2 alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Routes = tuple[tuple[str, int], ...]
SCALE = 1000  # weights of intermediate steps are shares in thousandths


def shares(routes: Routes) -> dict[str, float]:
    total = sum(weight for _, weight in routes)
    return {node: weight / total for node, weight in routes} if total else {}


def step_routes(before: Routes, after: Routes, percent: int) -> Routes:
    """The routes percent of the way from before to after (100 gives after itself)."""
    if percent >= 100:
        return after
    old, new = shares(before), shares(after)
    fraction = percent / 100
    order = [node for node, _ in after] + [node for node, _ in before if node not in new]
    routes = []
    for node in order:
        share = (1 - fraction) * old.get(node, 0.0) + fraction * new.get(node, 0.0)
        routes.append((node, round(share * SCALE)))
    return tuple(routes)


def rollout_steps(before: Routes, after: Routes, percents: Sequence[int]) -> list[Routes]:
    """Every set of routes the alias passes through, the spec's own last."""
    return [step_routes(before, after, percent) for percent in [*percents, 100]]


def gaining(before: Routes, after: Routes) -> list[str]:
    """The nodes whose share grows: the ones a step is judged on."""
    old, new = shares(before), shares(after)
    return [node for node, share in new.items() if share > old.get(node, 0.0)]


def error_rate(
    start: Mapping[str, tuple[int, int]], end: Mapping[str, tuple[int, int]], nodes: Sequence[str]
) -> tuple[int, float]:
    """(requests, fraction that failed with 5xx) of nodes between two (requests, errors)
    snapshots of the balancer's counters."""
    requests = errors = 0
    for node in nodes:
        r0, e0 = start.get(node, (0, 0))
        r1, e1 = end.get(node, (0, 0))
        requests += r1 - r0
        errors += e1 - e0
    return requests, (errors / requests if requests else 0.0)
