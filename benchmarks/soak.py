"""Soak `gitops-nodes watch`: steady load and regular commits for N minutes; what grows?

Not a test: it prints the figures that "Running for months" in the README quotes (a short run
of it is a CI test, tests/integration/test_soak.py, with budgets for a short window).
Everything runs on loopback (127.0.0.1) against the real Docker engine, from temporary
folders, and everything it creates is removed on the way out, also on Ctrl-C, SIGTERM or an
error (the watch process, then `gitops-nodes destroy`, then any container left with the
project's label, then the temporary folders).

1. A Git repository in a temp folder (branch main) holds the example's sentiment server and
   counter model, and a spec like the example's: nodes sentiment-v1 (2 instances) and
   sentiment-v2 built from sentiment/, the python node counter (its access log on for every
   request, with a small log budget of 2 files of 1 MiB, so that rotation happens within
   the run), and aliases `sentiment` (v1/v2) and `counter`, nodes and aliases in files of
   their own (nodes.yaml, aliases.yaml).
   `gitops-nodes watch file://<repo>` follows it with a hook token and its own free ports.
2. Load: --connections keep-alive clients through both aliases, paced to --rate requests
   per second in all (loopback only; every answer must be a 200 with the right body).
3. Commits: every --commit-every seconds a commit moves the sentiment alias's weights,
   announced with the hook (polling would find it too).
4. Samples, every --sample-every seconds: the watch process's RSS and open file descriptors
   (/proc), each instance's memory (`docker stats`) and log size (the json-file log and its
   rotated files, from the container's LogPath).
5. After --minutes: the slopes per hour of what was sampled after --warmup minutes (least
   squares), the failed requests, and each container's largest log against its budget.
6. With --extra-commits K: then --warm-commits commits to warm every cache, and K more, each
   waited for (applied, through the hook), the watch's RSS read after each: the growth per
   commit (least squares over the K samples, and last minus first over K).

With --check the exit code is 1 when a figure is over its budget (--max-*).

    python3 benchmarks/soak.py [--minutes 30] [--warmup 5] [--rate 100] [--commit-every 60]
                               [--extra-commits 500] [--check]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    BASE_IMAGE,
    HOST,
    PROJECT_LABEL,
    BenchError,
    cleanup_project,
    progress,
    require,
    require_base_image,
    run,
    run_reporting,
    signals_interrupt,
)
from watch_latency import Repo, Watch, start_watch

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "example-repo"
NODE_LABEL = "io.gitops-nodes.node"
START_TIMEOUT = 300.0  # the first reconcile builds two images when the engine has neither
CHANGE_TIMEOUT = 60.0
COUNTER_LOG = (2**20, 2)  # the counter's log budget: (max size, max files)
DEFAULT_LOG = (10 * 2**20, 3)  # gitops-nodes' default budget (spec.logs unset)
LOG_SLACK = 64 * 1024  # json-file checks the size before each write: one burst may pass it
MIB = 2**20


# -- the spec -------------------------------------------------------------------------------


def spec_text(v2_weight: int) -> str:
    """The example's sentiment and counter nodes, the sentiment alias at v2_weight% on v2."""
    size, files = COUNTER_LOG
    return f"""apiVersion: gitops-nodes/v1
kind: Node
metadata: {{name: sentiment-v1}}
spec:
  image: {{build: sentiment, port: 8080}}
  instances: 2
  env: {{MODEL_VERSION: "1"}}
  resources: {{cpus: 0.5, memory: 128Mi}}
  healthCheck: {{path: /healthz, interval: 2s, timeout: 1s, startTimeout: 30s}}
---
apiVersion: gitops-nodes/v1
kind: Node
metadata: {{name: sentiment-v2}}
spec:
  image: {{build: sentiment, port: 8080}}
  env: {{MODEL_VERSION: "2", THRESHOLD: "0.5"}}
  resources: {{cpus: 0.5, memory: 128Mi}}
  healthCheck: {{path: /healthz, interval: 2s, timeout: 1s, startTimeout: 30s}}
---
apiVersion: gitops-nodes/v1
kind: Node
metadata: {{name: counter}}
spec:
  python:
    code: counter/count.py
    inputs: {{value: float}}
    outputs: {{seen: int, mean: float}}
    baseImage: {BASE_IMAGE}
  env: {{GITOPS_NODES_ACCESS_LOG: all}}
  logs: {{maxSize: {size}, maxFiles: {files}}}
  healthCheck: {{path: /healthz, interval: 1s}}
---
apiVersion: gitops-nodes/v1
kind: Alias
metadata: {{name: sentiment}}
spec:
  nodes:
    - {{node: sentiment-v1, weight: {100 - v2_weight}}}
    - {{node: sentiment-v2, weight: {v2_weight}}}
---
apiVersion: gitops-nodes/v1
kind: Alias
metadata: {{name: counter}}
spec:
  nodes: [{{node: counter, weight: 100}}]
"""


ALIASES_START = "apiVersion: gitops-nodes/v1\nkind: Alias\n"


class SoakRepo(Repo):
    """The repository the watch follows: the example's sentiment server and counter model."""

    commits = 0

    def init(self) -> None:
        self.path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")
        shutil.copytree(EXAMPLE / "nodes" / "sentiment", self.path / "sentiment")
        shutil.copytree(EXAMPLE / "models" / "counter", self.path / "counter")

    def next_commit(self, what: str) -> str:
        """A commit moving the sentiment alias to the next of 10..40% on v2; its id.

        The nodes and the aliases are in files of their own, as in the example: a commit
        changes the aliases' file only, and the loader's cache sees an unchanged file (of
        nodes) in a new checkout every time."""
        self.commits += 1
        weight = 10 + self.commits % 31
        nodes, _, aliases = spec_text(weight).partition(ALIASES_START)
        (self.path / "nodes.yaml").write_text(nodes)
        (self.path / "aliases.yaml").write_text(ALIASES_START + aliases)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", f"{what} {self.commits}: v2 at {weight}%")
        return self.git("rev-parse", "HEAD").strip()


# -- load -------------------------------------------------------------------------------------

CALLS = (
    ("/aliases/sentiment/predict", b'{"text": "great and fast"}', b'"label"'),
    ("/aliases/counter/", b'{"value": 2}', b'"seen"'),
)


@dataclass
class Load:
    """Keep-alive clients through both aliases, paced to a total rate; counts what failed."""

    port: int
    rate: float
    connections: int
    requests: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n in range(self.connections):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _client(self, n: int) -> None:
        pause = self.connections / self.rate
        connection: http.client.HTTPConnection | None = None
        due = time.monotonic() + pause * n / self.connections  # clients spread over a period
        calls = 0
        while not self.stop.is_set():
            due += pause
            path, body, expected = CALLS[(n + calls) % len(CALLS)]
            calls += 1
            problem = None
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(HOST, self.port, timeout=10)
                connection.request("POST", path, body, {"content-type": "application/json"})
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200 or expected not in answer:
                    problem = f"{path}: {response.status} {answer[:120]!r}"
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{path}: {type(exc).__name__}: {exc}"
                if connection is not None:
                    connection.close()
                connection = None
            with self.lock:
                self.requests += 1
                if problem is not None:
                    self.failed += 1
                    if len(self.failures) < 10:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {problem}")
            delay = due - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            elif delay < -1:
                due = time.monotonic()  # fell behind (a slow answer): no burst to catch up
        if connection is not None:
            connection.close()


# -- samples ----------------------------------------------------------------------------------


def process_rss(pid: int) -> int:
    """Resident set size in bytes, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def process_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True)
class Container:
    """One instance's container: its name, node, and where the engine keeps its log."""

    name: str
    node: str
    log_path: Path

    def log_bytes(self) -> int:
        """The log and its rotated files (json-file keeps them as <LogPath>.1, .2, ...)."""
        folder = self.log_path.parent
        total = 0
        with contextlib.suppress(OSError):
            for entry in folder.iterdir():
                if entry.name.startswith(self.log_path.name):
                    total += entry.stat().st_size
        return total


def containers(project: str) -> list[Container]:
    ids = run(["docker", "ps", "-q", "--filter", f"label={PROJECT_LABEL}={project}"]).split()
    if not ids:
        return []
    fmt = f'{{{{.Name}}}} {{{{index .Config.Labels "{NODE_LABEL}"}}}} {{{{.LogPath}}}}'
    found = []
    for line in run(["docker", "inspect", "--format", fmt, *ids]).splitlines():
        name, node, log_path = line.split(" ", 2)
        found.append(Container(name.lstrip("/"), node, Path(log_path)))
    return found


def memory_bytes(names: Sequence[str]) -> dict[str, int]:
    """Each container's memory use as `docker stats` reports it (one sample)."""
    if not names:
        return {}
    out = run(["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *names])
    units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    found = {}
    for line in out.splitlines():
        name, usage = line.split(" ", 1)
        amount = usage.split("/")[0].strip()
        number = amount.rstrip("BKMGik")
        found[name] = int(float(number) * units[amount[len(number) :]])
    return found


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the soak began
    rss: int
    fds: int
    memory: dict[str, int]
    logs: dict[str, int]
    requests: int
    failed: int


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour (0 with under 2 points)."""
    if len(points) < 2 or len({t for t, _ in points}) < 2:
        return 0.0
    return statistics.linear_regression([t for t, _ in points], [v for _, v in points])[0] * 3600


# -- the soak ---------------------------------------------------------------------------------


@dataclass
class Options:
    minutes: float
    warmup: float
    rate: float
    connections: int
    commit_every: float
    sample_every: float
    extra_commits: int
    warm_commits: int
    interval: float = 10.0  # watch's --interval: how often it polls and reconciles


@dataclass
class Outcome:
    samples: list[Sample]
    warmup_s: float
    load: Load
    budgets: dict[str, int]  # container -> its log budget in bytes
    commits: int
    refused: list[str]
    per_commit: list[tuple[float, float]]  # (commit index, watch RSS) in the extra commits
    measured: str


def wait_applied(watch: Watch, revision: str, refused: list[str]) -> None:
    try:
        watch.wait_applied(revision, CHANGE_TIMEOUT)
    except BenchError as exc:
        refused.append(str(exc))


def soak(options: Options, sha: str) -> Outcome:
    project = f"soak-{secrets.token_hex(3)}"
    refused: list[str] = []
    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        repo, state_dir = SoakRepo(temp / "repo"), temp / "state"
        repo.init()
        revision = repo.next_commit("start")
        stack.callback(cleanup_project, repo.path, project, state_dir)
        watch = stack.enter_context(
            start_watch(repo.path, project, state_dir, temp / "watch.log", options.interval)
        )
        progress(f"project {project}: waiting for the first reconcile (may build images)")
        watch.wait_applied(revision, START_TIMEOUT)
        found = containers(project)
        budgets = {
            c.name: (COUNTER_LOG if c.node == "counter" else DEFAULT_LOG)[0]
            * (COUNTER_LOG if c.node == "counter" else DEFAULT_LOG)[1]
            for c in found
        }
        load = Load(watch.port, options.rate, options.connections)
        load.start()
        stack.callback(load.close)
        began = time.monotonic()
        samples: list[Sample] = []
        next_commit = began + options.commit_every
        next_sample = began
        end = began + options.minutes * 60
        progress(
            f"soaking for {options.minutes:g} min: {options.rate:g} requests/s, a commit "
            f"every {options.commit_every:g}s, warm-up {options.warmup:g} min"
        )
        while (now := time.monotonic()) < end:
            watch.check_running()
            if now >= next_commit:
                revision = repo.next_commit("soak")
                watch.hook()
                next_commit += options.commit_every
                threading.Thread(
                    target=wait_applied, args=(watch, revision, refused), daemon=True
                ).start()
            if now >= next_sample:
                samples.append(sample(watch, found, load, now - began))
                next_sample += options.sample_every
                last = samples[-1]
                progress(
                    f"{last.at / 60:5.1f} min: rss {last.rss / MIB:.2f} MiB, fds {last.fds}, "
                    f"requests {last.requests} ({last.failed} failed), commits {repo.commits}"
                )
            time.sleep(max(0.0, min(next_commit, next_sample, end) - time.monotonic()))
        per_commit: list[tuple[float, float]] = []
        if options.extra_commits:
            per_commit = extra_commits(repo, watch, options, refused)
        load.close()
        watch.check_running()
        progress("cleaning up")
    return Outcome(
        samples, options.warmup * 60, load, budgets, repo.commits, refused, per_commit, sha
    )


def sample(watch: Watch, found: Sequence[Container], load: Load, at: float) -> Sample:
    pid = watch.process.pid
    return Sample(
        at=at,
        rss=process_rss(pid),
        fds=process_fds(pid),
        memory=memory_bytes([c.name for c in found]),
        logs={c.name: c.log_bytes() for c in found},
        requests=load.requests,
        failed=load.failed,
    )


def extra_commits(
    repo: SoakRepo, watch: Watch, options: Options, refused: list[str]
) -> list[tuple[float, float]]:
    """Warm-up commits, then options.extra_commits more: (index, watch RSS) after each."""
    pid = watch.process.pid
    points: list[tuple[float, float]] = []
    total = options.warm_commits + options.extra_commits
    progress(f"{options.warm_commits} warm-up commits, then {options.extra_commits} measured")
    for n in range(total):
        revision = repo.next_commit("per-commit")
        watch.hook()
        wait_applied(watch, revision, refused)
        if n >= options.warm_commits:
            points.append((n - options.warm_commits, process_rss(pid)))
        if (n + 1) % 50 == 0:
            progress(f"{n + 1}/{total} commits, rss {process_rss(pid) / MIB:.2f} MiB")
    return points


# -- report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budgets:
    rss_mb_per_hour: float
    bytes_per_commit: float
    fd_range: int


def report(outcome: Outcome, budgets: Budgets) -> list[str]:
    """Print the figures; the budgets that were missed."""
    missed = []
    after = [s for s in outcome.samples if s.at >= outcome.warmup_s]
    load = outcome.load
    print(f"gitops-nodes watch soak, code at {outcome.measured}")
    if outcome.samples:
        minutes = outcome.samples[-1].at / 60
        print(
            f"{minutes:.1f} min sampled, slopes over the {len(after)} samples after a "
            f"{outcome.warmup_s / 60:g} min warm-up; {outcome.commits} commits"
        )
    print(f"requests: {load.requests}, failed: {load.failed}")
    for failure in load.failures:
        print(f"  {failure}")
    if load.failed:
        missed.append(f"{load.failed} requests failed")
    if outcome.refused:
        print(f"commits not applied: {len(outcome.refused)}")
        for why in outcome.refused[:5]:
            print(f"  {why.splitlines()[0]}")
        missed.append(f"{len(outcome.refused)} commits not applied")
    if len(after) >= 2:
        rss = slope_per_hour([(s.at, s.rss / 1e6) for s in after])
        print(
            f"watch RSS: {after[0].rss / MIB:.2f} -> {after[-1].rss / MIB:.2f} MiB, "
            f"slope {rss:+.3f} MB/hour (budget {budgets.rss_mb_per_hour:g})"
        )
        if rss > budgets.rss_mb_per_hour:
            missed.append(f"watch RSS grows {rss:.3f} MB/hour")
        fds = [s.fds for s in after]
        fd_slope = slope_per_hour([(s.at, s.fds) for s in after])
        print(
            f"watch fds: {min(fds)} to {max(fds)}, slope {fd_slope:+.1f}/hour "
            f"(budget: a range of {budgets.fd_range})"
        )
        if max(fds) - min(fds) > budgets.fd_range:
            missed.append(f"watch fds range over {max(fds) - min(fds)}")
        for name in sorted(after[-1].memory):
            points = [(s.at, s.memory[name] / 1e6) for s in after if name in s.memory]
            print(
                f"instance {name}: memory {points[-1][1]:.1f} MB, "
                f"slope {slope_per_hour(points):+.2f} MB/hour"
            )
    for name, budget in sorted(outcome.budgets.items()):
        largest = max((s.logs.get(name, 0) for s in outcome.samples), default=0)
        over = largest > budget + LOG_SLACK
        print(
            f"log of {name}: largest {largest / 1024:.0f} KiB of a budget of "
            f"{budget / 1024:.0f} KiB{' OVER' if over else ''}"
        )
        if over:
            missed.append(f"the log of {name} reached {largest} bytes, over {budget}")
    if outcome.per_commit:
        points = outcome.per_commit
        count = len(points)
        fitted = slope_per_hour(points) / 3600  # bytes per commit: x is the commit index
        overall = (points[-1][1] - points[0][1]) / max(1, count - 1)
        print(
            f"per commit, over {count} commits after the warm-up: RSS "
            f"{points[0][1] / MIB:.2f} -> {points[-1][1] / MIB:.2f} MiB, "
            f"{fitted:+.0f} bytes/commit fitted, {overall:+.0f} bytes/commit last minus first "
            f"(budget {budgets.bytes_per_commit:g})"
        )
        half = count // 2
        if half >= 2:  # still growing at the end, or a plateau reached on the way?
            first = slope_per_hour(points[:half]) / 3600
            second = slope_per_hour(points[half:]) / 3600
            print(
                f"  fitted over the first {half} commits {first:+.0f} bytes/commit, "
                f"over the last {count - half} {second:+.0f} bytes/commit"
            )
        if fitted > budgets.bytes_per_commit:
            missed.append(f"watch RSS grows {fitted:.0f} bytes per commit")
    for miss in missed:
        print(f"OVER BUDGET: {miss}")
    return missed


def code_version() -> str:
    try:
        sha = run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT).strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT)
    except BenchError:
        return "an unknown commit"
    return sha + (" with uncommitted changes" if dirty.strip() else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length (30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes not in slopes (5)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s in all (100)")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive clients (4)")
    parser.add_argument("--commit-every", type=float, default=60.0, help="seconds (60)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds (10)")
    parser.add_argument(
        "--interval", type=float, default=10.0, help="watch's poll interval, seconds (10)"
    )
    parser.add_argument("--extra-commits", type=int, default=0, help="per-commit mode: K")
    parser.add_argument("--warm-commits", type=int, default=50, help="before the K (50)")
    parser.add_argument("--check", action="store_true", help="exit 1 when over a budget")
    parser.add_argument("--max-rss-mb-per-hour", type=float, default=1.0)
    parser.add_argument("--max-bytes-per-commit", type=float, default=1024.0)
    parser.add_argument("--max-fd-range", type=int, default=16)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.rate > 1000:
        parser.error("--rate must be above 0 and at most 1000 (the machine is shared)")
    if args.minutes <= 0 or args.warmup >= args.minutes:
        parser.error("--minutes must be above 0 and above --warmup")
    options = Options(
        args.minutes,
        args.warmup,
        args.rate,
        max(1, args.connections),
        args.commit_every,
        args.sample_every,
        max(0, args.extra_commits),
        max(0, args.warm_commits),
        args.interval,
    )
    budgets = Budgets(args.max_rss_mb_per_hour, args.max_bytes_per_commit, args.max_fd_range)
    missed: list[str] = []

    def body() -> None:
        require("git", "docker")
        require_base_image()
        with signals_interrupt():
            outcome = soak(options, code_version())
        missed.extend(report(outcome, budgets))

    code = run_reporting(body, "everything the soak created was removed")
    return 1 if code == 0 and missed and args.check else code


if __name__ == "__main__":
    sys.exit(main())
