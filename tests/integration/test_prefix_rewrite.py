"""prefixRewrite on a real container: apply carries it into the routing table, and turning it
on or off republishes the table without touching the container."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir

from .helpers import alias_yaml, apply, node_yaml, table

Repo = Callable[[str], Path]


def spec(rewrite: bool) -> str:
    node = node_yaml("web", "1", extra_spec="  prefixRewrite: true\n" if rewrite else "")
    alias = alias_yaml("front", {"web": 1})
    if rewrite:
        alias = alias.replace("spec:\n", "spec:\n  prefixRewrite: true\n", 1)
    return node + alias


def test_apply_publishes_the_flag_without_new_containers(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    run = apply(app_repo(spec(False)), runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    published = table(state)
    assert not published.nodes["web"].prefix_rewrite
    assert not published.aliases["front"].prefix_rewrite
    containers = {i.name for i in runtime.list_instances(project)}

    run = apply(app_repo(spec(True)), runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    assert [f.field for c in run.plan.diff.nodes for f in c.fields] == ["prefixRewrite"]
    assert [f.field for c in run.plan.diff.aliases for f in c.fields] == ["prefixRewrite"]
    published = table(state)
    assert published.nodes["web"].prefix_rewrite
    assert published.aliases["front"].prefix_rewrite
    assert {i.name for i in runtime.list_instances(project)} == containers

    run = apply(app_repo(spec(False)), runtime, project, state)
    assert run.report is not None and run.report.ok, run.report
    assert not table(state).nodes["web"].prefix_rewrite
    assert {i.name for i in runtime.list_instances(project)} == containers
