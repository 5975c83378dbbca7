"""Benchmark apply at scale: N single-instance nodes, beside the engine's own speed and Compose.

Not a test: it prints a table. For each N of --nodes (50 and 500 by default) it makes N nodes
of one instance each from a tiny local image (busybox's httpd, from the static busybox of
Debian's busybox-static package, in an image FROM scratch) with a TCP health check, and times,
each as a fresh `gitops-nodes` process the way CI runs it:

- from nothing to running: `apply` (every instance Healthy, every wait the plan promises);
- nothing to do: `plan` and `apply` again;
- change all: one env value changed on every node, `apply` (rolling, make-before-break),
  while a watcher checks over and over that every node keeps an instance accepting
  connections (the nodes' minHealthy is 1);
- `status`, then `destroy`.

In the same run it measures the engine's own speed on N such containers through the Docker
SDK with 8 threads (create+start, a label-filtered listing, replacing all: as many created
and started beside them, then the old stopped and removed; force-remove), and, for the N of
--compose-nodes when Debian's `docker-compose` is installed, Compose on the same services
(`up -d`, `up -d` again, `up -d` after the env change, `down`). Then the ratios: ours to the
engine's, and each figure at the largest N to the smallest.

Everything it makes carries a unique project label (and the benchmark's), and is removed at
the end, on failure and Ctrl-C too.

    python3 benchmarks/apply_scale.py [--nodes 50 500] [--compose-nodes 50] [--parallelism P]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from common import (
    BENCH_LABEL,
    HOST,
    PROJECT_LABEL,
    REPO_ROOT,
    BenchError,
    compile_bytecode,
    cpu_busy,
    gitops_nodes,
    progress,
    run_reporting,
    signals_interrupt,
    userland_proxy_running,
    warn,
)

PORT = 8080
ENGINE_THREADS = 8
ROWS = [
    ("up", "from nothing to running (ours: all Healthy)"),
    ("plan", "nothing to do: plan"),
    ("noop", "nothing to do: apply"),
    ("change", "change all (ours: rolling, make-before-break)"),
    ("status", "status"),
    ("destroy", "destroy"),
]
ENGINE_ROWS = {
    "up": "create+start",
    "noop": "list by label",
    "change": "create+start beside, then stop+remove the old",
    "destroy": "force-remove",
}


@dataclass
class Figures:
    """Seconds per row for one tool at one N, and notes (the rolling watcher's findings)."""

    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- the image -------------------------------------------------------------------------------


def build_image(client: docker.DockerClient, tag: str, run_id: str) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise BenchError(
            "missing busybox (on Debian and Ubuntu: apt-get install -y busybox-static)"
        )
    with tempfile.TemporaryDirectory(prefix="apply-scale-image-") as folder:
        shutil.copy(busybox, Path(folder) / "busybox")
        (Path(folder) / "Dockerfile").write_text(
            "FROM scratch\nCOPY busybox /bin/busybox\n"
            f'CMD ["/bin/busybox", "httpd", "-f", "-p", "{PORT}", "-h", "/"]\n'
        )
        client.images.build(path=folder, tag=tag, rm=True, labels={BENCH_LABEL: run_id})


# -- the engine alone ------------------------------------------------------------------------


def engine_figures(client: docker.DockerClient, image: str, n: int, project: str) -> Figures:
    """create+start, list and force-remove of n containers, as gitops-nodes makes them."""
    api = client.api
    figures = Figures()

    def create(index: int) -> str:
        host_config = api.create_host_config(
            port_bindings={PORT: (HOST, None)}, restart_policy={"Name": "unless-stopped"}, init=True
        )
        created = api.create_container(
            image=image,
            name=f"{project}-engine-{index}-{'new' if index >= n else 'old'}",
            labels={BENCH_LABEL: project, PROJECT_LABEL: project},
            ports=[PORT],
            host_config=host_config,
        )
        api.start(created["Id"])
        return str(created["Id"])

    started = time.monotonic()
    with ThreadPoolExecutor(ENGINE_THREADS) as pool:
        ids = list(pool.map(create, range(n)))
    figures.seconds["up"] = time.monotonic() - started
    if userland_proxy_running():
        warn(
            "the engine runs docker-proxy for published ports (dockerd without "
            "--userland-proxy=false): creating and removing containers is slower than it can be"
        )
    lists = []
    for _ in range(5):
        started = time.monotonic()
        found = api.containers(all=True, filters={"label": f"{BENCH_LABEL}={project}"})
        lists.append(time.monotonic() - started)
    if len(found) != n:
        raise BenchError(f"the engine lists {len(found)} containers, {n} were made")
    figures.seconds["noop"] = statistics.median(lists)

    def retire(container: str) -> None:
        api.stop(container, timeout=10)
        api.remove_container(container, v=True)

    # What a make-before-break change of every node costs the engine alone: as many new
    # containers beside the old, then the old ones stopped (busybox's httpd ends on SIGTERM)
    # and removed; no health waits, no routing table, no ordering between nodes.
    started = time.monotonic()
    with ThreadPoolExecutor(ENGINE_THREADS) as pool:
        new = list(pool.map(create, range(n, 2 * n)))
        list(pool.map(retire, ids))
    figures.seconds["change"] = time.monotonic() - started
    started = time.monotonic()
    with ThreadPoolExecutor(ENGINE_THREADS) as pool:
        list(pool.map(lambda i: api.remove_container(i, force=True, v=True), new))
    figures.seconds["destroy"] = time.monotonic() - started
    return figures


# -- gitops-nodes ----------------------------------------------------------------------------


def write_repo(root: Path, image: str, n: int, revision: int) -> None:
    nodes = root / "nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    documents = [
        f"""apiVersion: gitops-nodes/v1
kind: Node
metadata:
  name: n{index:04d}
spec:
  image:
    name: {image}
    port: {PORT}
  env:
    REVISION: "{revision}"
  healthCheck:
    interval: 1s
    startTimeout: 120s
"""
        for index in range(n)
    ]
    (nodes / "nodes.yaml").write_text("---\n".join(documents))


def timed(argv: list[str], timeout: float, expect: tuple[int, ...] = (0,)) -> float:
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv[3:5])} did not finish in {timeout:g}s") from exc
    seconds = time.monotonic() - started
    if done.returncode not in expect:
        raise BenchError(
            f"{' '.join(argv[3:])} exited {done.returncode}:\n"
            + (done.stderr or done.stdout)[-3000:]
        )
    return seconds


class MinimumWatcher:
    """While a rolling change runs: every node must keep an instance accepting connections.

    A round lists the project's containers and connects to each node's ports. At hundreds of
    nodes a round costs the engine and this process a good share of a core, which the change
    it watches would otherwise have (the engine's replace-all runs unwatched): rounds are
    paced so the watcher spends at most BUSY of its time checking, and its CPU is reported."""

    BUSY = 0.2  # of wall time spent in rounds, at most
    PAUSE = 0.3  # between rounds, at least

    def __init__(self, client: docker.DockerClient, project: str, n: int) -> None:
        self.api = client.api
        self.project = project
        self.n = n
        self.stop = threading.Event()
        self.checks = 0
        self.worst = n  # the fewest nodes with an instance answering, over all checks
        self.suspects = 0  # nodes that did not answer at first but did when looked at again
        self.failed: set[str] = set()  # nodes that answered neither time, in some check
        self.failures: Counter[str] = Counter()  # how their second looks failed
        self.busy = 0.0  # seconds spent in rounds
        self.cpu = 0.0  # this process's CPU while watching: the rounds' (apply is another)
        self.thread = threading.Thread(target=self._run, daemon=True)

    FIRST_LOOK = 1.0  # s to connect at the first look
    SECOND_LOOK = 5.0  # s at the second: past the kernel's first SYN retransmission (1 s)

    def _connect(self, port: int, timeout: float) -> str:
        """'ok', 'refused' (nothing listens: a real gap) or how else the connect failed."""
        try:
            with socket.create_connection((HOST, port), timeout=timeout):
                return "ok"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timed out"
        except OSError as exc:
            return exc.strerror or type(exc).__name__

    def _answers(self, port: int) -> bool:
        return self._connect(port, self.FIRST_LOOK) == "ok"

    def _ports(self, containers: list[dict[str, Any]]) -> dict[str, list[int]]:
        """node -> the published ports of its instances in this listing."""
        ports: dict[str, list[int]] = {}
        for container in containers:
            node = container["Labels"].get("io.gitops-nodes.node", "?")
            for port in container.get("Ports") or ():
                if port.get("PublicPort") and port.get("PrivatePort") == PORT:
                    ports.setdefault(node, []).append(int(port["PublicPort"]))
        return ports

    def _serves_now(self, node: str) -> bool:
        """The second look: a fresh listing of the node, a longer timeout; how each of its
        ports failed is counted (refusals are gaps, timeouts may be the machine's load)."""
        labels = [f"{PROJECT_LABEL}={self.project}", f"io.gitops-nodes.node={node}"]
        found = self.api.containers(all=True, filters={"label": labels})
        how = [self._connect(p, self.SECOND_LOOK) for p in self._ports(found).get(node, [])]
        if "ok" in how:
            return True
        self.failures.update(how or ["no published port listed"])
        return False

    def _run(self) -> None:
        with ThreadPoolExecutor(16) as pool:
            while not self.stop.is_set():
                started = time.monotonic()
                found = self.api.containers(
                    all=True, filters={"label": f"{PROJECT_LABEL}={self.project}"}
                )
                ports = self._ports(found)

                def serving(node_ports: list[int]) -> bool:
                    return any(self._answers(p) for p in node_ports)

                nodes = list(ports)
                first = dict(zip(nodes, pool.map(serving, ports.values()), strict=True))
                # A node that did not answer is looked at again, from a fresh listing: the
                # first listing may predate its new instance, and its old one may have been
                # stopped since (make-before-break done between listing and connecting).
                again = [node for node, ok in first.items() if not ok]
                confirmed = [node for node in again if not self._serves_now(node)]
                self.suspects += len(again) - len(confirmed)
                if confirmed:
                    self.failed.update(confirmed)
                self.checks += 1
                self.worst = min(self.worst, len(nodes) - len(confirmed))
                took = time.monotonic() - started
                self.busy += took
                self.stop.wait(max(self.PAUSE, took * (1 - self.BUSY) / self.BUSY))

    @contextmanager
    def watching(self) -> Iterator[None]:
        cpu = time.process_time()
        self.thread.start()
        try:
            yield
        finally:
            self.stop.set()
            self.thread.join(timeout=30)
            self.cpu = time.process_time() - cpu


def ours_figures(
    client: docker.DockerClient, image: str, n: int, project: str, work: Path, parallelism: int
) -> Figures:
    repo, state = work / "repo", work / "state"
    write_repo(repo, image, n, 1)
    common = ["--project", project, "--state-dir", str(state)]
    limit = 120.0 + n * 3.0
    figures = Figures()
    more = ["--parallelism", str(parallelism)] if parallelism else []
    figures.seconds["up"] = timed(
        gitops_nodes("apply", "--auto-approve", str(repo), *common, *more), limit
    )
    figures.seconds["plan"] = timed(
        gitops_nodes("plan", str(repo), *common, "--detailed-exitcode"), limit
    )
    figures.seconds["noop"] = timed(
        gitops_nodes("apply", "--auto-approve", str(repo), *common, *more), limit
    )
    write_repo(repo, image, n, 2)
    watcher = MinimumWatcher(client, project, n)
    with watcher.watching():
        figures.seconds["change"] = timed(
            gitops_nodes("apply", "--auto-approve", str(repo), *common, *more), limit
        )
    figures.notes.append(
        f"rolling change of {n}: in {watcher.checks} checks ({watcher.busy:.1f} s of rounds, "
        f"{watcher.cpu:.1f} s of this process's CPU) "
        f"the fewest nodes with an instance accepting connections was {watcher.worst} of {n}"
        + ("" if watcher.worst == n else " (BELOW THE MINIMUM)")
        + f"; {watcher.suspects} node(s) answered only when looked at again"
        + (
            f"; answering at neither look in some check: {', '.join(sorted(watcher.failed)[:10])}"
            f" (second looks: {', '.join(f'{k} {v}' for k, v in watcher.failures.items())})"
            if watcher.failed
            else ""
        )
    )
    figures.seconds["status"] = timed(gitops_nodes("status", str(repo), *common), limit)
    figures.seconds["destroy"] = timed(gitops_nodes("destroy", str(repo), *common), limit)
    return figures


# -- Compose ---------------------------------------------------------------------------------


def write_compose(folder: Path, image: str, n: int, revision: int, run_id: str) -> None:
    services = "".join(
        f"""  n{index:04d}:
    image: {image}
    ports: ["{HOST}::{PORT}"]
    environment: {{REVISION: "{revision}"}}
    labels: {{"{BENCH_LABEL}": "{run_id}"}}
"""
        for index in range(n)
    )
    (folder / "docker-compose.yml").write_text(f'version: "2.4"\nservices:\n{services}')


def compose_figures(image: str, n: int, project: str, work: Path, run_id: str) -> Figures:
    folder = work / "compose"
    folder.mkdir()
    figures = Figures()
    base = ["docker-compose", "--no-ansi", "-p", project]
    limit = 120.0 + n * 3.0
    write_compose(folder, image, n, 1, run_id)

    def compose(*args: str) -> float:
        started = time.monotonic()
        done = subprocess.run(
            [*base, *args], cwd=folder, capture_output=True, text=True, timeout=limit, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"docker-compose {' '.join(args)}: {done.stderr[-2000:]}")
        return time.monotonic() - started

    figures.seconds["up"] = compose("up", "-d")
    figures.seconds["noop"] = compose("up", "-d")
    write_compose(folder, image, n, 2, run_id)
    figures.seconds["change"] = compose("up", "-d")
    figures.seconds["destroy"] = compose("down")
    return figures


# -- cleanup and report ----------------------------------------------------------------------


def remove_everything(client: docker.DockerClient, run_id: str, image: str) -> None:
    api = client.api
    for label in (f"{BENCH_LABEL}={run_id}",):
        try:
            left = api.containers(all=True, filters={"label": label})
        except docker.errors.DockerException as exc:
            warn(f"listing what is left failed: {exc}")
            continue
        if left:
            warn(f"removing {len(left)} container(s) left with label {label}")
        with ThreadPoolExecutor(ENGINE_THREADS) as pool:
            list(pool.map(lambda c: _force_remove(api, c["Id"]), left))
    for project_prefix in (run_id,):
        left = [
            c
            for c in api.containers(all=True, filters={"label": PROJECT_LABEL})
            if c["Labels"].get(PROJECT_LABEL, "").startswith(project_prefix)
        ]
        if left:
            warn(f"removing {len(left)} container(s) of projects {project_prefix}*")
        with ThreadPoolExecutor(ENGINE_THREADS) as pool:
            list(pool.map(lambda c: _force_remove(api, c["Id"]), left))
    try:
        client.images.remove(image, force=True)
    except docker.errors.DockerException as exc:
        warn(f"removing image {image} failed: {exc}")


def _force_remove(api: docker.APIClient, container: str) -> None:
    with suppress(docker.errors.NotFound):
        api.remove_container(container, force=True, v=True)


def report(sizes: list[int], results: dict[tuple[str, int], Figures], busy: float) -> None:
    columns = [
        (tool, n) for n in sizes for tool in ("ours", "compose", "engine") if (tool, n) in results
    ]
    names = {
        "ours": "gitops-nodes",
        "compose": "docker-compose",
        "engine": "engine (SDK, 8 threads)",
    }
    header = ["operation"] + [f"{names[t]}, {n}" for t, n in columns]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key, label in ROWS:
        cells = [label]
        for tool, n in columns:
            value = results[(tool, n)].seconds.get(key)
            if value is None:
                cells.append("—")
            elif tool == "engine":
                cells.append(f"{value:.2f} s ({ENGINE_ROWS[key]})")
            else:
                cells.append(f"{value:.2f} s")
        print("| " + " | ".join(cells) + " |")
    print()
    for n in sizes:
        ours, engine = results.get(("ours", n)), results.get(("engine", n))
        if ours and engine:
            up = ours.seconds["up"] / engine.seconds["up"]
            down = ours.seconds["destroy"] / engine.seconds["destroy"]
            change = ours.seconds["change"] / engine.seconds["change"]
            print(
                f"{n} nodes: up / engine create+start {up:.2f} (target ≤ 1.3); "
                f"destroy / engine force-remove {down:.2f} (target ≤ 1.5); "
                f"change all / engine replace-all {change:.2f} (the target is 12 s at 50); "
                f"no-op plan {ours.seconds['plan']:.2f} s, apply {ours.seconds['noop']:.2f} s "
                f"(targets ≤ 0.5 s at 50)"
            )
        compose = results.get(("compose", n))
        if ours and compose:
            print(
                f"{n} nodes: docker-compose / gitops-nodes: "
                + ", ".join(
                    f"{key} {compose.seconds[key] / ours.seconds[key]:.2f}"
                    for key in ("up", "noop", "change", "destroy")
                )
            )
        for figures in (ours,) if ours else ():
            for note in figures.notes:
                print(note)
    if len(sizes) > 1 and ("ours", sizes[0]) in results and ("ours", sizes[-1]) in results:
        small, large = results[("ours", sizes[0])], results[("ours", sizes[-1])]
        factor = sizes[-1] / sizes[0]
        print(
            f"{sizes[-1]} / {sizes[0]} nodes (target ≤ {factor * 1.2:g}): "
            + ", ".join(
                f"{key} {large.seconds[key] / small.seconds[key]:.1f}"
                for key, _ in ROWS
                if key in large.seconds and key in small.seconds
            )
        )
    print(f"\nCPU busy before the run: {busy:.0%} (other work skews every figure)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--compose-nodes", type=int, nargs="*", default=[50])
    parser.add_argument(
        "--parallelism", type=int, default=0, help="apply --parallelism (default: apply's own)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "engine", "compose"])
    args = parser.parse_args()
    sizes = sorted(args.nodes)
    run_id = f"bench-apply-{os.getpid()}-{int(time.time()) % 100000}"
    image = f"gitops-nodes-bench/busybox:{run_id}"
    client = docker.from_env(timeout=600)
    results: dict[tuple[str, int], Figures] = {}

    def body() -> None:
        busy = cpu_busy()
        if busy > 0.25:
            warn(f"the machine is {busy:.0%} busy: figures will be slower than on a quiet one")
        compile_bytecode()  # commands are timed as an installed gitops-nodes runs them
        progress(f"building {image}")
        build_image(client, image, run_id)
        compose = shutil.which("docker-compose") is not None
        if not compose:
            warn("docker-compose is not installed (apt-get install -y docker-compose): no column")
        for n in sizes:
            with tempfile.TemporaryDirectory(prefix="apply-scale-") as folder:
                work = Path(folder)
                if "engine" not in args.skip:
                    progress(f"{n} nodes: the engine alone")
                    results[("engine", n)] = engine_figures(client, image, n, f"{run_id}-e{n}")
                if "ours" not in args.skip:
                    progress(f"{n} nodes: gitops-nodes")
                    results[("ours", n)] = ours_figures(
                        client, image, n, f"{run_id}-g{n}", work, args.parallelism
                    )
                if compose and n in args.compose_nodes and "compose" not in args.skip:
                    progress(f"{n} nodes: docker-compose")
                    results[("compose", n)] = compose_figures(
                        image, n, f"{run_id}-c{n}".replace("-", ""), work, run_id
                    )
        print(f"apply_scale, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
        report(sizes, results, busy)

    with signals_interrupt():
        try:
            return run_reporting(body, "removed what it made")
        finally:
            remove_everything(client, run_id, image)


if __name__ == "__main__":
    sys.exit(main())
