"""Benchmark apply's own cost: N single-instance nodes on the memory runtime, no engine.

Not a test: it prints a table. For each N of --nodes (50 and 500 by default) it applies, in
one process, on a MemoryRuntime whose instances are Healthy at once and whose clock is
virtual (apply's waits move it on instead of sleeping):

- up: N nodes from nothing;
- change: one env value changed on every node (rolling, make-before-break);
- destroy: the empty spec.

Each is `workflow.apply` as the CLI calls it (observe, plan, apply), with the state directory
in a temporary folder, so the routing table's writes reach the disk (and its fsyncs) as they
do for real; CPU seconds leave those waits out. What is left is the Python that
apply_scale.py's figures hold besides the engine's calls, and the 500/50 ratios say whether
it grows faster than the nodes do. No balancer reports by default, as in apply_scale.py
(no `watch` runs there); --balancers B starts B memory balancers, whose reports cost the
memory runtime a pass over the table's instances each. A small run first pays for imports
and first calls; each figure is the median of --runs. --profile runs the largest N once
more and prints where its change spends its time.

    python3 benchmarks/apply_memory.py [--nodes 50 500] [--balancers B] [--parallelism P]
                                       [--runs 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import gitops_nodes
from gitops_nodes import workflow
from gitops_nodes.apply import ApplyOptions
from gitops_nodes.runtime.memory import MemoryRuntime, VirtualClock
from gitops_nodes.spec.hashing import InstanceConfig, spec_hash
from gitops_nodes.spec.models import HealthCheck
from gitops_nodes.spec.state import DesiredNode, DesiredState, Source
from gitops_nodes.statedir import StateDir

PROJECT = "bench"
PHASES = ("up", "change", "destroy")
REPO_ROOT = Path(__file__).resolve().parent.parent  # this checkout's code, not an installed one


def desired(root: Path, nodes: int, version: str) -> DesiredState:
    """nodes single-instance nodes whose env holds VERSION=version."""
    made = {}
    for i in range(nodes):
        config = InstanceConfig("busybox", 8080, None, (("VERSION", version),), None, None)
        made[f"svc-{i:04d}"] = DesiredNode(
            name=f"svc-{i:04d}",
            config=config,
            spec_hash=spec_hash(config),
            instances=1,
            min_healthy=1,
            health_check=HealthCheck(),
            build=None,
            source=Source("nodes.yaml", i),
        )
    return DesiredState(root, MappingProxyType(made), MappingProxyType({}))


class ThreadProfiles:
    """cProfile in every thread started while it is on: apply's steps run in a pool. Before
    Python 3.12 a profiler sees only the thread that enabled it, so each thread gets its
    own, on that thread's CPU time; from 3.12 one sees them all, on the wall clock."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self.lock = threading.Lock()
        self.per_thread = sys.version_info < (3, 12)

    def _start(self, *_: object) -> None:
        # threading calls this as the new thread's first profile event: from here on, that
        # thread's own profiler replaces it.
        profile = cProfile.Profile(time.thread_time) if self.per_thread else cProfile.Profile()
        with self.lock:
            self.profiles.append(profile)
        profile.enable()

    def enable(self) -> None:
        if self.per_thread:
            threading.setprofile(self._start)
        self._start()

    def disable(self) -> None:
        if self.per_thread:
            threading.setprofile(None)
        self.profiles[0].disable()  # the main thread's; the pool's threads have ended

    def print(self, top: int) -> None:
        stats = pstats.Stats(self.profiles[0], stream=sys.stdout)
        for profile in self.profiles[1:]:
            stats.add(profile)
        stats.sort_stats("tottime").print_stats(top)


def run(
    nodes: int, balancers: int, parallelism: int, profile: ThreadProfiles | None = None
) -> dict[str, tuple[float, float]]:
    """Each phase's seconds and CPU seconds for nodes nodes (the change under profile, when
    given). CPU is the process's: the pool's threads too, not the table's fsync waits."""
    clock = VirtualClock()
    runtime = MemoryRuntime(clock)
    runtime.fleet(PROJECT).keep_history = False  # the memory engine's bookkeeping, not apply's
    for _ in range(balancers):
        runtime.fleet(PROJECT).start()
    options = ApplyOptions(parallelism=parallelism, clock=clock)
    seconds: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="gitops-nodes-bench-") as folder:
        root = Path(folder)
        state = StateDir(root / "state")
        specs: dict[str, Callable[[], DesiredState]] = {
            "up": lambda: desired(root, nodes, "1"),
            "change": lambda: desired(root, nodes, "2"),
            "destroy": lambda: workflow.empty_spec(root),
        }
        for phase in PHASES:
            spec = specs[phase]()
            gc.collect()  # the previous phase's garbage is not this one's cost
            on = profile if phase == "change" else None
            start, cpu = time.perf_counter(), time.process_time()
            if on is not None:
                on.enable()
            done = workflow.apply(spec, runtime, PROJECT, state, options)
            if on is not None:
                on.disable()
            seconds[phase] = (time.perf_counter() - start, time.process_time() - cpu)
            if done.report is None or not done.report.ok:
                raise SystemExit(f"{phase} at {nodes} nodes did not apply cleanly")
    if runtime.containers:
        raise SystemExit(f"destroy at {nodes} nodes left {len(runtime.containers)} containers")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--balancers", type=int, default=0, help="memory balancers reporting")
    parser.add_argument("--parallelism", type=int, default=ApplyOptions().parallelism)
    parser.add_argument("--runs", type=int, default=3, help="each figure the median of these")
    parser.add_argument("--profile", action="store_true", help="profile the largest change")
    args = parser.parse_args(argv)

    if Path(gitops_nodes.__file__).resolve().parent.parent != REPO_ROOT:
        raise SystemExit(
            f"would measure {gitops_nodes.__file__}, not this checkout's code: "
            f"run with PYTHONPATH={REPO_ROOT}"
        )
    sizes = sorted(args.nodes)
    run(5, args.balancers, args.parallelism)  # imports and first calls: not the nodes' cost
    figures: dict[int, dict[str, tuple[float, float]]] = {}
    for n in sizes:
        runs = [run(n, args.balancers, args.parallelism) for _ in range(args.runs)]
        figures[n] = {
            phase: (
                statistics.median(r[phase][0] for r in runs),
                statistics.median(r[phase][1] for r in runs),
            )
            for phase in PHASES
        }

    print(
        f"apply on the memory runtime, {args.balancers} balancer(s), "
        f"parallelism {args.parallelism}, median of {args.runs}: seconds (CPU seconds)"
    )
    print(f"{'nodes':>6} " + " ".join(f"{phase:>15}" for phase in PHASES))
    for n in sizes:
        cells = (f"{figures[n][p][0]:.3f} ({figures[n][p][1]:.3f})" for p in PHASES)
        print(f"{n:>6} " + " ".join(f"{cell:>15}" for cell in cells))
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        ratios = (
            f"{figures[large][p][0] / figures[small][p][0]:.1f}x "
            f"({figures[large][p][1] / figures[small][p][1]:.1f}x)"
            for p in PHASES
        )
        print(f"{f'{large}/{small}':>6} " + " ".join(f"{r:>15}" for r in ratios))
    if args.profile:  # a run of its own: the profiler slows what it watches
        profile = ThreadProfiles()
        run(sizes[-1], args.balancers, args.parallelism, profile)
        print(f"\nthe change at {sizes[-1]} nodes, by own time:")
        profile.print(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
