"""Benchmark how fast `gitops-nodes watch` turns a `git commit` into traffic on the new state.

Not a test: it prints the figures that the watch issue's "Done when" asks for. Everything runs
on loopback (127.0.0.1) against the real Docker engine, from temporary folders, and everything
it creates is removed on the way out, also on Ctrl-C, SIGTERM or an error: the watch process
(SIGTERM, then wait), then `gitops-nodes destroy` of its project with the same --state-dir,
then `docker rm -f` of any container still labelled with the project (or with the benchmark's
own label), then the temporary folders.

1. A Git repository in a temp folder (branch main) holds tests/integration/app as app/ and a
   spec: nodes v1 and v2 built from app (VERSION 1 and 2, health check /healthz every 200ms)
   and alias `api` at v1=100, v2=0. `gitops-nodes watch file://<repo> --interval 2s` follows
   it with a hook token, a project name of its own and free ports.
2. A change to the alias's weights only (v1=100/v2=0 <-> v1=0/v2=100): the time from the moment
   `git commit` returns to the first response through the alias from the newly weighted node,
   (a) found by polling (a random pause of up to one interval before each commit spreads the
   commits over the fetch cycle) and (b) with `POST /-/hooks/git` right after the commit.
3. A new node: one commit adds node v3 (VERSION 3) and moves the alias to it, with the hook;
   the time from commit to the first response from v3, and the same minus the container's own
   start and preparation time, measured in the same run as a plain `docker run -d` of v3's
   image (published on 127.0.0.1) until its /healthz answers 200. Between runs a commit that
   removes v3 again (not timed) brings the repo back to step 1's spec.

PASS/MISS compares the max of the runs with the target. The figures are for one machine in
one run; other load on it shows up in them.

    python3 benchmarks/watch_latency.py [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BENCH_LABEL,
    HOST,
    PROJECT_LABEL,
    BenchError,
    cleanup_project,
    free_port,
    gitops_nodes,
    progress,
    require,
    require_base_image,
    run,
    run_reporting,
    signals_interrupt,
    warn,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_DIR = REPO_ROOT / "tests" / "integration" / "app"
NODE_LABEL = "io.gitops-nodes.node"
ALIAS = "api"
INTERVAL = 2.0  # the watch's --interval, in seconds
TARGET_HOOK = 1.0  # seconds: weights with the hook, and a new node net of its container
START_TIMEOUT = 180.0  # first reconcile: may build the image
CHANGE_TIMEOUT = 60.0  # one commit made live
NODE_TIMEOUT = 90.0  # a new node served
CONTAINER_TIMEOUT = 30.0  # a plain container answering /healthz
STOP_TIMEOUT = 45.0  # the watch drains for up to 30 s by default
SPEC_FILE = "spec.yaml"


# -- the spec -----------------------------------------------------------------------------


def node_yaml(name: str, version: str) -> str:
    """A node of the test service, built from app/ (the shape tests/integration uses)."""
    return f"""apiVersion: gitops-nodes/v1
kind: Node
metadata: {{name: {name}}}
spec:
  image: {{build: app, port: 8080}}
  instances: 1
  minHealthy: 1
  env: {{VERSION: "{version}"}}
  healthCheck: {{path: /healthz, interval: 200ms, timeout: 1s, startTimeout: 15s}}
---
"""


def alias_yaml(routes: dict[str, int]) -> str:
    lines = "".join(f"    - {{node: {n}, weight: {w}}}\n" for n, w in routes.items())
    return f"""apiVersion: gitops-nodes/v1
kind: Alias
metadata: {{name: {ALIAS}}}
spec:
  nodes:
{lines}"""


def spec_text(nodes: dict[str, str], routes: dict[str, int]) -> str:
    return "".join(node_yaml(n, v) for n, v in nodes.items()) + alias_yaml(routes)


BASE_NODES = {"v1": "1", "v2": "2"}
ON_V1 = {"v1": 100, "v2": 0}
ON_V2 = {"v1": 0, "v2": 100}


# -- commands -----------------------------------------------------------------------------


class Repo:
    """The temporary Git repository the watch follows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def git(self, *args: str) -> str:
        identity = ["-c", "user.name=watch-bench", "-c", "user.email=watch-bench@localhost"]
        return run(["git", *identity, *args], cwd=self.path)

    def init(self) -> None:
        self.path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")
        shutil.copytree(APP_DIR, self.path / "app", ignore=shutil.ignore_patterns("__pycache__"))

    def commit(self, text: str, message: str) -> tuple[str, float]:
        """Write the spec and commit it; the commit id and the clock when `git commit` returned."""
        (self.path / SPEC_FILE).write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        committed = time.perf_counter()
        return self.git("rev-parse", "HEAD").strip(), committed


# -- the watch process and its endpoints ---------------------------------------------------


@dataclass
class Watch:
    """A running `gitops-nodes watch` and the ways to reach it."""

    process: subprocess.Popen[bytes]
    log: Path
    port: int
    admin_port: int
    token: str

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"gitops-nodes watch exited {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def status(self) -> dict[str, Any]:
        """The "watch" object of /-/status ({} while the control plane does not answer)."""
        url = f"http://{HOST}:{self.admin_port}/-/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                data = json.loads(response.read())
        except (OSError, ValueError):
            return {}
        watch = data.get("watch") if isinstance(data, dict) else None
        return watch if isinstance(watch, dict) else {}

    def hook(self) -> None:
        request = urllib.request.Request(
            f"http://{HOST}:{self.admin_port}/-/hooks/git",
            method="POST",
            headers={"Authorization": f"Bearer {self.token}"},
            data=b"",
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError as exc:
            raise BenchError(f"POST /-/hooks/git failed: {exc}") from exc
        if status != 202:
            raise BenchError(f"POST /-/hooks/git answered {status}, expected 202")

    def wait_applied(self, revision: str, timeout: float = CHANGE_TIMEOUT) -> dict[str, Any]:
        """Poll /-/status until revision is applied and no reconcile runs; its last reconcile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            watch = self.status()
            if watch.get("appliedRevision") == revision and not watch.get("reconciling"):
                last = watch.get("lastReconcile")
                return last if isinstance(last, dict) else {}
            error = watch.get("lastError")
            if isinstance(error, dict) and error.get("revision") == revision:
                raise BenchError(f"commit {revision[:12]} was refused: {error.get('error')}")
            time.sleep(0.05)
        raise BenchError(
            f"commit {revision[:12]} not applied within {timeout:g}s:\n{self.log_tail()}"
        )


@contextlib.contextmanager
def start_watch(
    repo: Path, project: str, state_dir: Path, log: Path, interval: float
) -> Iterator[Watch]:
    """Start the watch in a session of its own; stop it (SIGTERM, wait, SIGKILL) on the way out."""
    port, admin_port = free_port(), free_port()
    token = secrets.token_hex(16)
    env = {**os.environ, "GITOPS_NODES_HOOK_TOKEN": token}
    argv = gitops_nodes(
        "watch",
        f"file://{repo}",
        "--branch",
        "main",
        "--project",
        project,
        "--state-dir",
        str(state_dir),
        "--host",
        HOST,
        "--port",
        str(port),
        "--admin-host",
        HOST,
        "--admin-port",
        str(admin_port),
        "--interval",
        f"{interval:g}s",
        "--log-format",
        "text",
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop it in order
        )
    try:
        yield Watch(process, log, port, admin_port, token)
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        warn(f"gitops-nodes watch (pid {process.pid}) ignored SIGTERM; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# -- measuring ------------------------------------------------------------------------------


class AliasClient:
    """GET through the alias on one keep-alive connection, reconnecting after any failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def version(self) -> str | None:
        """The version that answered, or None for a failed or non-200 request."""
        try:
            if self.connection is None:
                self.connection = http.client.HTTPConnection(HOST, self.port, timeout=2)
            self.connection.request("GET", f"/aliases/{ALIAS}/bench")
            response = self.connection.getresponse()
            body = response.read()
            if response.status != 200:
                return None
            found = json.loads(body).get("version")
            return str(found) if found is not None else None
        except (OSError, http.client.HTTPException, ValueError):
            self.close()
            return None

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def wait_for(self, version: str, timeout: float, pause: float = 0.002) -> float:
        """Poll until a response comes from version; the clock when it arrived."""
        deadline = time.perf_counter() + timeout
        while True:
            found = self.version()
            now = time.perf_counter()
            if found == version:
                return now
            if now >= deadline:
                raise BenchError(
                    f"alias {ALIAS} did not answer with version {version} in {timeout:g}s "
                    f"(last answer: {found})"
                )
            time.sleep(pause)


def wait_until_http_ok(port: int, path: str, timeout: float) -> float:
    """Poll http://127.0.0.1:port/path until it answers 200; the clock when it did."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            with contextlib.closing(http.client.HTTPConnection(HOST, port, timeout=1)) as conn:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    return time.perf_counter()
        except (OSError, http.client.HTTPException):
            pass
        if time.perf_counter() >= deadline:
            raise BenchError(f"127.0.0.1:{port}{path} did not answer 200 in {timeout:g}s")
        time.sleep(0.005)


def container_start_seconds(image: str, project: str) -> float:
    """A plain `docker run -d` of image (as v3 runs it) until its /healthz answers 200."""
    port = free_port()
    name = f"{project}-plain-{secrets.token_hex(3)}"
    started = time.perf_counter()
    try:
        run(
            [
                "docker",
                "run",
                "-d",
                "--init",
                "--name",
                name,
                "--label",
                f"{BENCH_LABEL}={project}",
                "-p",
                f"{HOST}:{port}:8080",
                "-e",
                "VERSION=3",
                image,
            ]
        )
        return wait_until_http_ok(port, "/healthz", CONTAINER_TIMEOUT) - started
    finally:
        with contextlib.suppress(BenchError):
            run(["docker", "rm", "-f", name])


def node_image(project: str, node: str) -> str:
    """The image the watch runs node's instance from."""
    out = run(
        [
            "docker",
            "ps",
            "--filter",
            f"label={PROJECT_LABEL}={project}",
            "--filter",
            f"label={NODE_LABEL}={node}",
            "--format",
            "{{.Image}}",
        ]
    ).split()
    if not out:
        raise BenchError(f"no running container of node {node} in project {project}")
    return out[0]


@dataclass
class Figures:
    """The measurements, in seconds."""

    polling: list[float]
    hook: list[float]
    node_raw: list[float]
    node_container: list[float]

    @property
    def node_net(self) -> list[float]:
        return [raw - own for raw, own in zip(self.node_raw, self.node_container, strict=True)]


def measure_weights(
    repo: Repo, watch: Watch, client: AliasClient, runs: int, use_hook: bool, label: str
) -> list[float]:
    """Flip the alias between v1 and v2 runs times; commit -> first response from the new one."""
    results = []
    for i in range(runs):
        current = client.version()
        if current not in ("1", "2"):
            raise BenchError(f"alias {ALIAS} answers {current!r} before a flip, expected 1 or 2")
        routes, want = (ON_V2, "2") if current == "1" else (ON_V1, "1")
        if not use_hook:
            time.sleep(random.uniform(0, INTERVAL))  # commit anywhere in the fetch cycle
        revision, committed = repo.commit(spec_text(BASE_NODES, routes), f"{label} {i}: {routes}")
        if use_hook:
            watch.hook()
        served = client.wait_for(want, INTERVAL + CHANGE_TIMEOUT)
        results.append(served - committed)
        watch.wait_applied(revision)
        progress(f"{label} {i + 1}/{runs}: {served - committed:.3f}s")
    return results


def measure_new_node(
    repo: Repo, watch: Watch, client: AliasClient, project: str, runs: int
) -> tuple[list[float], list[float]]:
    """Add v3 with the alias on it; commit -> first response from v3, and v3's own start."""
    raw, own = [], []
    for i in range(runs):
        nodes = {**BASE_NODES, "v3": "3"}
        revision, committed = repo.commit(spec_text(nodes, {"v3": 100}), f"new node {i}: v3")
        watch.hook()
        served = client.wait_for("3", NODE_TIMEOUT)
        raw.append(served - committed)
        watch.wait_applied(revision, NODE_TIMEOUT)
        own.append(container_start_seconds(node_image(project, "v3"), project))
        progress(f"new node {i + 1}/{runs}: {raw[-1]:.3f}s, plain container {own[-1]:.3f}s")
        revision, _ = repo.commit(spec_text(BASE_NODES, ON_V1), f"remove v3 after run {i}")
        watch.hook()
        watch.wait_applied(revision, NODE_TIMEOUT)
        client.wait_for("1", CHANGE_TIMEOUT)
    return raw, own


# -- report ---------------------------------------------------------------------------------


def report(figures: Figures, runs: int, project: str) -> None:
    def row(case: str, values: list[float], target: float | None, note: str = "") -> str:
        median, worst = statistics.median(values), max(values)
        goal = f"< {target:.2f} s{note}" if target is not None else "-"
        verdict = ("PASS" if worst < target else "MISS") if target is not None else ""
        return f"{case:<34} {median:>7.3f} {worst:>7.3f}  {goal:<26} {verdict}".rstrip()

    print(f"gitops-nodes watch: commit -> first request served (seconds, {runs} runs each)")
    print(f"project {project}, --interval {INTERVAL:g}s; PASS/MISS judges the max")
    print(f"{'case':<34} {'median':>7} {'max':>7}  {'target':<26} result")
    polling_target = TARGET_HOOK + INTERVAL
    print(row("weights only, polling", figures.polling, polling_target, " (1 s + interval)"))
    print(row("weights only, hook", figures.hook, TARGET_HOOK))
    print(row("new node v3, hook: raw", figures.node_raw, None))
    print(row("  plain docker run -> /healthz 200", figures.node_container, None))
    print(row("new node v3, hook: net", figures.node_net, TARGET_HOOK))


# -- setup, cleanup, main --------------------------------------------------------------------


def bench(runs: int) -> tuple[str, Figures]:
    """Set up, measure every case, clean up; the project name and the figures."""
    project = f"watch-bench-{secrets.token_hex(3)}"
    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="watch-bench-")))
        repo, state_dir = Repo(temp / "repo"), temp / "state"
        repo.init()
        revision, _ = repo.commit(spec_text(BASE_NODES, ON_V1), "v1 and v2, alias on v1")
        stack.callback(cleanup_project, repo.path, project, state_dir)  # after the watch stops
        watch = stack.enter_context(
            start_watch(repo.path, project, state_dir, temp / "watch.log", INTERVAL)
        )
        client = AliasClient(watch.port)
        stack.callback(client.close)
        progress(f"project {project}: waiting for the first reconcile (may build the image)")
        watch.wait_applied(revision, START_TIMEOUT)
        client.wait_for("1", CHANGE_TIMEOUT)
        polling = measure_weights(repo, watch, client, runs, use_hook=False, label="polling")
        hook = measure_weights(repo, watch, client, runs, use_hook=True, label="hook")
        if client.version() != "1":  # the new-node runs start from the alias on v1
            revision, _ = repo.commit(spec_text(BASE_NODES, ON_V1), "alias back on v1")
            watch.hook()
            watch.wait_applied(revision)
            client.wait_for("1", CHANGE_TIMEOUT)
        node_raw, node_container = measure_new_node(repo, watch, client, project, runs)
        watch.check_running()
        progress("cleaning up")
    return project, Figures(polling, hook, node_raw, node_container)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="measurements per case (5)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    def body() -> None:
        require("git", "docker")
        require_base_image()
        with signals_interrupt():
            project, figures = bench(args.runs)
        report(figures, args.runs, project)

    return run_reporting(body, "everything the benchmark created was removed")


if __name__ == "__main__":
    sys.exit(main())
