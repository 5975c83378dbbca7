"""Benchmark load + validate + plan on a generated repository of thousands of nodes and aliases.

Not a test: it prints figures beside the targets of the "YAML at scale" issue (under 3 s cold,
under 0.3 s to re-plan after one file changed). It generates a repository into a temporary
folder (nodes spread over --files files, aliases over --files files of their own, several
documents per file), then measures in one process, each figure the median of --runs runs:

1. cold: a fresh SpecLoader().load(root) and make_plan against an empty live state;
2. one file changed (one node's env value), the same SpecLoader (warm cache), empty live state;
3. one file changed, against a live state matching the spec before the change (the CI/watch
   case: the plan holds only the changed node);

and, for comparison, the one-shot load_spec(root) that the CLI uses.

    python3 benchmarks/plan_scale.py [--nodes 5000] [--aliases 5000] [--files 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import networkx as nx
import pydantic
import yaml

from balancer.table import AliasEntry, Endpoint, NodeEntry, RoutingTable
from gitops_nodes.health import settings_from
from gitops_nodes.live import LiveInstance, LiveState
from gitops_nodes.plan import Plan, make_plan
from gitops_nodes.spec import yaml12
from gitops_nodes.spec.load import SpecLoader, load_spec
from gitops_nodes.spec.state import DesiredState

PROJECT = "bench"
COLD_TARGET_MS = 3000.0
WARM_TARGET_MS = 300.0
SCHEMA_LINE = "# yaml-language-server: $schema=../../schemas/gitops-nodes-v1.schema.json\n"


# --- the generated repository -------------------------------------------------------------


@dataclass
class NodeDef:
    """One generated node; `revision` is the env value the warm runs edit."""

    name: str
    team: str
    instances: int
    revision: int


@dataclass
class Repo:
    """The generated repository: where it is and which file holds which node."""

    root: Path
    node_files: dict[Path, list[NodeDef]]
    documents: int
    size: int


def _node_yaml(node: NodeDef, rng: random.Random) -> str:
    cpus = rng.choice(["0.25", "0.5", "1", "2"])
    memory = rng.choice(["128Mi", "256Mi", "512Mi", "1Gi"])
    min_healthy = max(1, node.instances - 1)
    version = f"{rng.randint(1, 4)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"
    lines = [
        "apiVersion: gitops-nodes/v1",
        "kind: Node",
        "metadata:",
        f"  name: {node.name}",
        f"  description: {node.team} model server {node.name}",
        "spec:",
        "  image:",
        f"    name: registry.example.com/{node.team}/{node.name}:{version}",
        "    port: 8080",
        f"  instances: {node.instances}",
        f"  minHealthy: {min_healthy}",
        "  env:",
        "    LOG_LEVEL: info",
        f'    MODEL_REVISION: "{node.name}-r{node.revision}"',
        "    # bumped by the nightly retrain",
        f'    BATCH_SIZE: "{rng.choice([8, 16, 32])}"',
        "  resources:",
        f"    cpus: {cpus}",
        f"    memory: {memory}",
        "  healthCheck:",
        "    path: /healthz",
        "    interval: 2s",
        "    timeout: 1s",
        f"    startTimeout: {rng.choice(['30s', '1m', '2m'])}",
    ]
    return "\n".join(lines) + "\n"


def _alias_yaml(name: str, routes: list[tuple[str, int]]) -> str:
    lines = [
        "apiVersion: gitops-nodes/v1",
        "kind: Alias",
        "metadata:",
        f"  name: {name}",
        "spec:",
        "  nodes:",
    ]
    if len(routes) > 1:
        lines.append("    # canary: move traffic by editing the weights")
    for node, weight in routes:
        lines += [f"    - node: {node}", f"      weight: {weight}"]
    return "\n".join(lines) + "\n"


def _render_nodes(nodes: list[NodeDef], seed: int) -> str:
    rng = random.Random(seed)  # same seed, same text: only `revision` edits change a file
    header = SCHEMA_LINE + f"# Model servers of team {nodes[0].team}.\n"
    return header + "---\n".join(_node_yaml(node, rng) for node in nodes)


def _chunks(count: int, files: int) -> list[range]:
    files = max(1, min(files, count))
    size, extra = divmod(count, files)
    bounds, start = [], 0
    for index in range(files):
        end = start + size + (1 if index < extra else 0)
        bounds.append(range(start, end))
        start = end
    return bounds


def generate(root: Path, nodes: int, aliases: int, files: int) -> Repo:
    """Write the repository: nodes/team-NNN.yaml and aliases/group-NNN.yaml."""
    rng = random.Random(5000)
    names = [f"svc-{i:05d}" for i in range(nodes)]
    node_files: dict[Path, list[NodeDef]] = {}
    size = 0
    (root / "nodes").mkdir(parents=True)
    (root / "aliases").mkdir()
    for number, chunk in enumerate(_chunks(nodes, files)):
        team = f"team-{number:03d}"
        defs = [NodeDef(names[i], team, rng.randint(1, 3), 1) for i in chunk]
        path = root / "nodes" / f"{team}.yaml"
        text = _render_nodes(defs, number)
        path.write_text(text)
        node_files[path] = defs
        size += len(text)
    for number, chunk in enumerate(_chunks(aliases, files) if aliases else []):
        documents = []
        for i in chunk:
            targets = rng.sample(names, k=min(len(names), rng.choice([1, 2])))
            routes = (
                [(targets[0], 100)] if len(targets) == 1 else [(targets[0], 90), (targets[1], 10)]
            )
            documents.append(_alias_yaml(f"api-{i:05d}", routes))
        text = SCHEMA_LINE + "# Stable names that callers use.\n" + "---\n".join(documents)
        (root / "aliases" / f"group-{number:03d}.yaml").write_text(text)
        size += len(text)
    return Repo(root, node_files, nodes + aliases, size)


def edit_one_file(repo: Repo, number: int) -> str:
    """Change one node's env value in one file; returns the node's name."""
    path, defs = next(iter(repo.node_files.items()))
    node = defs[len(defs) // 2]
    node.revision = number + 2  # never 1, the value the live state was built from
    path.write_text(_render_nodes(defs, list(repo.node_files).index(path)))
    return node.name


# --- a live state that matches a spec --------------------------------------------------------


def matching_live(desired: DesiredState) -> LiveState:
    """What apply leaves behind for desired: every instance running, everything published."""
    instances: list[LiveInstance] = []
    nodes: dict[str, NodeEntry] = {}
    port = 30000
    for name, node in desired.nodes.items():
        endpoints = []
        for index in range(node.instances):
            container = f"{PROJECT}-{name}-{index}-{port:06x}"
            instances.append(
                LiveInstance(
                    name=container,
                    node=name,
                    index=index,
                    spec_hash=node.spec_hash,
                    config=node.config,
                    state="running",
                    port=port,
                    started_at=0.0,
                )
            )
            endpoints.append(Endpoint(container, "127.0.0.1", port))
            port += 1
        nodes[name] = NodeEntry(
            tuple(endpoints), node.min_healthy, settings_from(node.health_check)
        )
    aliases = {name: AliasEntry(alias.routes) for name, alias in desired.aliases.items()}
    table = RoutingTable(1, MappingProxyType(nodes), MappingProxyType(aliases))
    return LiveState(PROJECT, tuple(instances), frozenset(), table)


# --- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One run's figures (or the medians of several)."""

    load_ms: float
    plan_ms: float
    render_ms: float  # plan.to_json(), which `gitops-nodes plan` prints; not in the total
    steps: int
    changed_nodes: int

    @property
    def total_ms(self) -> float:
        return self.load_ms + self.plan_ms


def measure(load: Callable[[], DesiredState], live: Callable[[], LiveState] | None) -> Sample:
    """Time load, then make_plan against live() (empty when None), built outside the clock.

    The previous run's garbage is collected first, so a run pays only for the collections
    its own allocations trigger (as a fresh CLI process or one watch iteration would).
    """
    gc.collect()
    start = time.perf_counter()
    desired = load()
    loaded = time.perf_counter()
    state = live() if live is not None else LiveState(PROJECT)
    planned_at = time.perf_counter()
    plan: Plan = make_plan(PROJECT, desired, state)
    end = time.perf_counter()
    plan.to_json()
    rendered = time.perf_counter()
    return Sample(
        (loaded - start) * 1000,
        (end - planned_at) * 1000,
        (rendered - end) * 1000,
        plan.graph.number_of_nodes(),
        len(plan.diff.nodes),
    )


def median(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.load_ms for s in samples),
        statistics.median(s.plan_ms for s in samples),
        statistics.median(s.render_ms for s in samples),
        samples[-1].steps,
        samples[-1].changed_nodes,
    )


def verdict(value: float, target: float | None) -> str:
    if target is None:
        return ""
    return f"< {target:,.0f}  {'PASS' if value < target else 'MISS'}"


def versions() -> str:
    libyaml = "not available"
    if yaml.__with_libyaml__:
        from yaml import _yaml

        # The parser every spec file is read with (yaml12 binds libyaml's when it imports).
        used = vars(yaml12)["_PARSER"] is _yaml.CParser
        libyaml = f"libyaml {_yaml.get_version_string()} ({'used' if used else 'NOT used'})"
    return (
        f"python {platform.python_version()}, PyYAML {yaml.__version__} with {libyaml}, "
        f"pydantic {pydantic.VERSION}, networkx {nx.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--aliases", type=int, default=5000)
    parser.add_argument("--files", type=int, default=100, help="files of nodes (and of aliases)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="gitops-nodes-bench-") as folder:
        repo = generate(Path(folder) / "repo", args.nodes, args.aliases, args.files)
        root = repo.root
        print(
            f"repo: {args.nodes} nodes in {len(repo.node_files)} files, {args.aliases} aliases "
            f"in {len(list((root / 'aliases').glob('*.yaml')))} files, "
            f"{repo.documents} documents, {repo.size / 1e6:.1f} MB"
        )
        print(versions())

        cold = [measure(lambda: SpecLoader().load(root), None) for _ in range(args.runs)]
        one_shot = [measure(lambda: load_spec(root), None) for _ in range(args.runs)]

        loader = SpecLoader()
        before = loader.load(root)
        live = matching_live(before)
        if not make_plan(PROJECT, before, live).empty:
            raise SystemExit("the hand-built live state does not match the spec it came from")

        edits = 0
        warm_empty, warm_live = [], []
        for _ in range(args.runs):
            edit_one_file(repo, edits)
            edits += 1
            warm_empty.append(measure(lambda: loader.load(root), None))
        for _ in range(args.runs):
            changed = edit_one_file(repo, edits)
            edits += 1
            sample = measure(lambda: loader.load(root), lambda: live)
            if sample.changed_nodes != 1:
                raise SystemExit(f"expected only {changed} in the plan, got {sample}")
            warm_live.append(sample)

    rows = [
        ("cold: fresh SpecLoader, empty live", median(cold), COLD_TARGET_MS),
        ("one file changed, empty live", median(warm_empty), WARM_TARGET_MS),
        ("one file changed, matching live", median(warm_live), WARM_TARGET_MS),
        ("cold: one-shot load_spec, empty live", median(one_shot), None),
    ]
    print(f"\nmedian of {args.runs} runs, in ms: load = read + parse + validate + assemble;")
    print("plan = make_plan; total = load + plan; to_json = what `plan` prints (not in total)")
    header = (
        f"{'case':<38} {'load':>7} {'plan':>7} {'total':>7} {'steps':>6} {'to_json':>8}  target"
    )
    print(header)
    print("-" * (len(header) + 12))
    for label, sample, target in rows:
        print(
            f"{label:<38} {sample.load_ms:>7.0f} {sample.plan_ms:>7.0f} {sample.total_ms:>7.0f} "
            f"{sample.steps:>6} {sample.render_ms:>8.0f}  {verdict(sample.total_ms, target)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
