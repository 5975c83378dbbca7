"""Benchmark how loading and validating one large file grows with its size, and what big files
the spec does not need cost.

Not a test: it prints figures beside the targets of "any repository, any input":

1. valid: N Node documents in one file, loaded and validated (load_spec), for N = --small
   (10,000) and --large (100,000): time and peak memory; the large case within 10x the small
   one's time and under 1 GiB;
2. one error: the large file with one document made invalid (instances: 0) in its middle;
   reported in no more than the valid large case's time;
3. a 50 MB data file listed in .gitops-nodes-ignore next to a small spec: what it adds;
4. the same file not ignored: refused (over the size limit) in under a second.

Each figure is measured in a fresh process (so its peak RSS is its own), the median of --runs;
times are the process's CPU time (what the load costs, steady on a busy machine), with wall
time beside it.

    python3 benchmarks/load_scale.py [--small 10000] [--large 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent  # this checkout's code, not an installed one
RATIO_TARGET = 10.0
MEMORY_TARGET_MIB = 1024.0
REFUSE_TARGET_S = 1.0
DATA_MB = 50

NODE = """apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: node-{i}
spec:
  image: {{name: "registry.example.com/team-{team}/node:{i}", port: 8080}}
  instances: {instances}
  env: {{MODEL_VERSION: "{i}", MODE: "fast"}}
  resources: {{cpus: 0.5, memory: 256Mi}}
  healthCheck: {{path: /healthz, interval: 2s}}
"""


def write_nodes(root: Path, count: int, bad: int | None = None) -> Path:
    """A repository of count nodes in one file; document bad (if any) has instances: 0."""
    root.mkdir(parents=True)
    documents = (
        NODE.format(i=i, team=i % 50, instances=0 if i == bad else 1 + i % 3) for i in range(count)
    )
    (root / "nodes.yaml").write_text("---\n".join(documents))
    return root


def write_data(root: Path, megabytes: int) -> None:
    """A data set committed next to the spec: YAML too, megabytes of it."""
    row = b"- [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]\n"
    with (root / "data.yaml").open("wb") as handle:
        handle.write(row * (megabytes * 1_000_000 // len(row)))


def child(root: str) -> None:
    """Run in a fresh process: load root once, print what happened as one JSON line."""
    import gitops_nodes

    if Path(gitops_nodes.__file__).resolve().parent.parent != REPO_ROOT:
        raise SystemExit(f"measuring {gitops_nodes.__file__}, not this checkout's code")
    from gitops_nodes.spec.errors import SpecErrors
    from gitops_nodes.spec.load import load_spec

    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        state = load_spec(Path(root))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        outcome = f"{len(state.nodes)} nodes"
    except SpecErrors as exc:
        # Timed when the error is in hand, as the CLI prints it: freeing what the failed load
        # built happens afterwards (in the valid case too, after its timer), not before.
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        outcome = f"{len(exc.problems)} error(s): {exc.problems[0]}"
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mib": peak_mib, "outcome": outcome}))


@dataclass(frozen=True)
class Sample:
    """Median CPU and wall seconds, the largest peak RSS and the outcome of some loads."""

    cpu: float
    wall: float
    peak_mib: float
    outcome: str

    def time(self, digits: int = 2) -> str:
        return f"{self.cpu:.{digits}f} s ({self.wall:.{digits}f} s)"


def measure(root: Path, runs: int) -> Sample:
    """runs fresh-process loads of root."""
    samples = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(root)],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return Sample(
        cpu=statistics.median(sample["cpu"] for sample in samples),
        wall=statistics.median(sample["seconds"] for sample in samples),
        peak_mib=max(sample["peak_mib"] for sample in samples),
        outcome=samples[0]["outcome"],
    )


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0

    print(
        f"Python {platform.python_version()}, PyYAML {yaml.__version__} "
        f"(libyaml {'yes' if getattr(yaml, '__with_libyaml__', False) else 'no'}), "
        f"median of {args.runs} fresh processes"
    )
    with tempfile.TemporaryDirectory(prefix="gitops-nodes-load-") as folder:
        base = Path(folder)
        small = write_nodes(base / "small", args.small)
        large = write_nodes(base / "large", args.large)
        bad = write_nodes(base / "bad", args.large, bad=args.large // 2)
        size_mb = (large / "nodes.yaml").stat().st_size / 1e6

        small_run = measure(small, args.runs)
        large_run = measure(large, args.runs)
        bad_run = measure(bad, args.runs)
        ratio = large_run.cpu / small_run.cpu
        fits = ratio <= RATIO_TARGET and large_run.peak_mib < MEMORY_TARGET_MIB

        print("\n| case | CPU (wall) | peak RSS | outcome | target |\n|---|---|---|---|---|")
        print(
            f"| {args.small:,} nodes, one file | {small_run.time()} "
            f"| {small_run.peak_mib:.0f} MiB | {small_run.outcome} | |"
        )
        print(
            f"| {args.large:,} nodes, one file ({size_mb:.1f} MB) | {large_run.time()} "
            f"| {large_run.peak_mib:.0f} MiB | {large_run.outcome} "
            f"| ≤ {RATIO_TARGET:g}x, < 1 GiB: {ratio:.1f}x, {verdict(fits)} |"
        )
        print(
            f"| {args.large:,} nodes, one error | {bad_run.time()} | {bad_run.peak_mib:.0f} MiB "
            f"| {bad_run.outcome[:60]} | ≤ valid: {verdict(bad_run.cpu <= large_run.cpu)} |"
        )

        spec = write_nodes(base / "ignored", 100)
        plain = measure(spec, args.runs)
        write_data(spec, DATA_MB)
        (spec / ".gitops-nodes-ignore").write_text("data.yaml\n")
        ignored = measure(spec, args.runs)
        print(
            f"| 100 nodes + {DATA_MB} MB data.yaml, ignored | {ignored.time(3)} "
            f"| {ignored.peak_mib:.0f} MiB | {ignored.outcome} "
            f"| costs nothing: {(ignored.cpu - plain.cpu) * 1000:+.0f} ms CPU against none |"
        )
        (spec / ".gitops-nodes-ignore").unlink()
        refused = measure(spec, args.runs)
        print(
            f"| 100 nodes + {DATA_MB} MB data.yaml, not ignored | {refused.time(3)} "
            f"| {refused.peak_mib:.0f} MiB | {refused.outcome[:70]} "
            f"| < {REFUSE_TARGET_S:g} s: {verdict(refused.wall < REFUSE_TARGET_S)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
