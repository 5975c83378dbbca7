"""Benchmark the example's iris Python nodes: in-process, one instance, the alias, batched,
memory, start.

Not a test: it prints the figures that the Python-nodes issue's "Done when" asks for, in one
run. Everything listens on 127.0.0.1 only, runs against the real Docker engine from a
temporary folder, and everything it creates is removed on the way out, also on Ctrl-C,
SIGTERM or an error: the `gitops-nodes serve` process (SIGTERM to its session, then
SIGKILL), `gitops-nodes destroy` of its project with the same --state-dir (which also removes
the image the project built), `docker rm -f` of any container still labelled with the project
or with the benchmark's own label, then the temporary folder.

1. example-repo/ is copied to a temp folder and cut down to nodes iris (its request code a
   notebook's cell) and iris-batched (instances: 1 each) and their aliases. A marker
   comment is appended to the copy's request code (the notebook's cell, or the code file):
   image tags are content hashes shared by all projects, so without it the apply would
   re-tag the image of an `example-repo` project running on the same engine and destroy
   would then remove it. The copy is applied under a project name of its own and served by
   `gitops-nodes serve` (free ports on 127.0.0.1, one worker), pinned with wrk to core 1:
   the instance's core is its own, as where the balancer runs on CPUs of its own.
   Unpinned, the scheduler moved it onto the instance's core from run to run, and the alias
   figure measured that sharing.
2. In the node's own image, one `docker run -i --rm --cpuset-cpus 0` container that stays up
   for the whole run: the checkpoint's load time in a fresh interpreter (`import sklearn`
   plus loading model.pkl, the median of 3), then the in-process loop: the request code
   compiled once and exec'd in a loop in the namespace the checkpoint fills, with one sample
   (as the runtime runs it, without HTTP and JSON), for as long as each line on its standard
   input asks. Between those slices it waits, using no CPU.
3. The instance container is pinned to core 0 (`docker update --cpuset-cpus 0`) and
   `wrk -t1 --latency` to core 1 (taskset) posts the sample (a Lua script sets the body) at
   16 connections, to the instance's published port and through /aliases/iris/ on the
   balancer, each warmed up once. Then --rounds rounds of --duration seconds each: the
   instance, the alias, the in-process loop; each round's ratios are taken against the mean
   of the in-process slices on either side of it, and the median of the rounds is compared
   with the target. This machine's speed drifts by a third within a minute; a ratio of runs
   far apart would measure the drift, so the slices are short and interleaved.
   Then the instance and the alias at 1 connection, for the p50.
   The batched twin (iris-batched: python.batch, maxSize 64, maxDelay 2ms) is measured in
   the same rounds at 64 connections, on its instance and through its alias, against the
   same in-process single-call rate; then at 1 connection. The copy's batched node also
   answers `batch_size` (the size of the batch each request ran in): while wrk loads it at
   64 connections, a probe's requests read it, which shows whether requests coming through
   the alias reach the instance together (batches form) or one by one.
   A warning is printed when the published port goes through docker-proxy (an engine
   running with its userland proxy), which costs about 30% of the instance's requests/s.
4. The instance's memory after the load: `docker stats --no-stream` MemUsage, and the peak
   RSS (VmHWM in /proc) summed over the container's processes.
5. Start to healthy: the instance is stopped, then `docker start`ed (pinned as before) and
   timed until GET /healthz on its published port answers 200; both from just before
   `docker start` and from the container's State.StartedAt (the process start). The median
   of --restarts runs is compared with 1.5 s plus the checkpoint's load time.

Ratios are within one run; other load on the machine shows up in them, so the CPUs' busy
share is sampled first.

    python3 benchmarks/python_node_bench.py [--duration 2] [--warmup 1] [--restarts 3]
                                            [--rounds 10] [--no-batched]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from common import (
    BENCH_LABEL,
    HOST,
    PROJECT_LABEL,
    REPO_ROOT,
    BenchError,
    WrkResult,
    cleanup_project,
    cpu_busy,
    free_port,
    gitops_nodes,
    parse_wrk,
    progress,
    require,
    require_base_image,
    run_reporting,
    signals_interrupt,
    userland_proxy_running,
)
from common import run as run_command

EXAMPLE = REPO_ROOT / "example-repo"
NODE = "iris"
ALIAS = "iris"
SAMPLE = [5.1, 3.5, 1.4, 0.2]
EXPECTED = "setosa"  # what the example's model answers for SAMPLE
BODY = json.dumps({"measurements": SAMPLE})
INSTANCE_CORE = "0"  # the instance container, and the in-process loop
CLIENT_CORE = "1"  # wrk, and the balancer
NODE_LABEL = "io.gitops-nodes.node"
TARGET_INSTANCE = 0.75  # instance requests/s over in-process calls/s
TARGET_ALIAS = 0.65
TARGET_P50_MS = 0.3  # at one connection, on the instance
TARGET_START_S = 1.5  # plus the checkpoint's load time
BATCHED_NODE = "iris-batched"
BATCHED_ALIAS = "iris-batched"
BATCH_CONNECTIONS = 64
TARGET_BATCHED = 4.0  # batched instance requests/s over in-process single calls/s
MOONSHOT_BATCHED = 6.0
TARGET_BATCHED_ALIAS = 2.5
TARGET_BATCHED_P99_MS = 5.0  # plus maxDelay
PROBES = 40  # requests whose batch_size is read while wrk loads the batched node
BUSY_WARNING = 0.10
APPLY_TIMEOUT = 600.0  # may download wheels and build the image
COMMAND_TIMEOUT = 120.0


def run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, cwd: Path | None = None) -> str:
    """common.run with this benchmark's own bound."""
    return run_command(argv, cwd, timeout)


READY_TIMEOUT = 60.0
HEALTHY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
MARKER = "\n# copy made by benchmarks/python_node_bench.py (keeps its image tag its own)\n"

# Runs inside the node's image: python3 -c IN_PROCESS <warm-up seconds> <loads>. Prints one
# JSON line when ready, then one per line of standard input (the seconds to loop for).
IN_PROCESS = r"""
import json, pickle, statistics, subprocess, sys, time
config = json.load(open("/app/node.json"))
checkpoint, code_path = "/app/" + config["checkpoint"], "/app/" + config["code"]
LOAD = (
    "import time; start = time.perf_counter(); import pickle, sklearn; "
    "from gitops_nodes.pynode.node import load_checkpoint; from pathlib import Path; "
    f"state = load_checkpoint(Path({checkpoint!r})); print(time.perf_counter() - start)"
)
loads = [
    float(subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True,
                         check=True).stdout)
    for _ in range(int(sys.argv[2]))
]
namespace = {"__name__": "__main__"}
from gitops_nodes.pynode.node import load_checkpoint  # a header of versions, then the state
from pathlib import Path
namespace.update(load_checkpoint(Path(checkpoint)))
code = compile(open(code_path).read(), code_path, "exec")
namespace["measurements"] = SAMPLE
def loop(seconds):
    calls, start, cpu = 0, time.perf_counter(), time.process_time()
    end = start + seconds
    while True:
        for _ in range(50):
            exec(code, namespace)
        calls += 50
        now = time.perf_counter()
        if now >= end:
            return calls, now - start, time.process_time() - cpu
loop(float(sys.argv[1]))
print(json.dumps({"load_s": statistics.median(loads) if loads else 0.0, "loads": loads,
                  "species_name": namespace["species_name"],
                  "probability": namespace["probability"]}), flush=True)
for line in sys.stdin:
    calls, elapsed, cpu = loop(float(line))
    print(json.dumps({"calls": calls, "elapsed": elapsed, "cpu": cpu}), flush=True)
""".replace("SAMPLE", repr(SAMPLE))

WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""


# -- commands -------------------------------------------------------------------------------


# -- the repository copy ----------------------------------------------------------------------


def make_repo(target: Path, batched: bool) -> float:
    """Copy example-repo to target, keeping only nodes iris and iris-batched (one instance
    each) and their aliases; the batched one's maxDelay in seconds (0 without it)."""
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", ".git"))
    nodes = {NODE, BATCHED_NODE} if batched else {NODE}
    aliases = {ALIAS, BATCHED_ALIAS} if batched else {ALIAS}
    found: set[str] = set()
    delay = 0.0
    for folder, kind, names in (("nodes", "Node", nodes), ("aliases", "Alias", aliases)):
        for path in sorted((target / folder).glob("*.y*ml")):
            documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
            keep = [
                d for d in documents if d.get("kind") == kind and d["metadata"]["name"] in names
            ]
            if not keep:
                path.unlink()
                continue
            for document in keep if kind == "Node" else ():
                spec = document["spec"]
                spec["instances"] = 1
                python = spec["python"]
                text = MARKER
                if "batch" in python:
                    # The probe reads each request's batch size (see the docstring).
                    python["outputs"]["batch_size"] = "int"
                    text += "batch_size = [len(measurements)] * len(measurements)\n"
                    delay = parse_ms(python["batch"].get("maxDelay", "2ms")) / 1000
                if "notebook" in python:  # the marker goes at the end of the request cell
                    notebook = (path.parent / python["notebook"]).resolve()
                    data = json.loads(notebook.read_text())
                    for cell in data["cells"]:
                        if python["cell"] in cell["metadata"].get("tags", []):
                            cell["source"] = "".join(cell["source"]) + "\n" + text
                    notebook.write_text(json.dumps(data))
                else:
                    with (path.parent / python["code"]).resolve().open("a") as file:
                        file.write(text)
                found.add(document["metadata"]["name"])
            path.write_text(yaml.safe_dump_all(keep, sort_keys=False))
    if found != nodes:
        raise BenchError(f"no node {', '.join(sorted(nodes - found))} in {EXAMPLE / 'nodes'}")
    for path in (target / "nodes" / "sentiment", target / "models" / "counter"):
        shutil.rmtree(path, ignore_errors=True)  # what only the dropped nodes used
    return delay


def parse_ms(text: str) -> float:
    """Milliseconds from the spec's 2ms, 0.5s, 0s."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", text)
    if match is None:
        raise BenchError(f"cannot read the batch's maxDelay {text!r}")
    return float(match.group(1)) * (1 if match.group(2) == "ms" else 1000)


# -- serve ----------------------------------------------------------------------------------


@dataclass
class Serve:
    """The `gitops-nodes serve` process this script started, in a session of its own."""

    process: subprocess.Popen[bytes]
    log: Path
    port: int
    admin_port: int

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"gitops-nodes serve exited {self.process.returncode}:\n{self.log_tail()}"
            )


@contextlib.contextmanager
def start_serve(repo: Path, project: str, state_dir: Path, log: Path) -> Iterator[Serve]:
    port, admin_port = free_port(), free_port()
    argv = [
        "taskset", "-c", CLIENT_CORE, *gitops_nodes(
            "serve", str(repo), "--project", project, "--state-dir", str(state_dir),
            "--host", HOST, "--port", str(port),
            "--admin-host", HOST, "--admin-port", str(admin_port),
        ),
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Serve(process, log, port, admin_port)
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process's session, SIGKILL what is left after STOP_TIMEOUT; reap it."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT)


# -- HTTP ---------------------------------------------------------------------------------------


def request(port: int, method: str, path: str, body: str | None = None) -> tuple[int, bytes]:
    """One request on a fresh connection; (status, body)."""
    with contextlib.closing(http.client.HTTPConnection(HOST, port, timeout=2)) as conn:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()


def wait_prediction(port: int, path: str, timeout: float, check: Any = None) -> None:
    """Poll POST path until it answers 200 with the expected species."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            status, data = request(port, "POST", path, BODY)
            if status == 200 and json.loads(data).get("species_name") == EXPECTED:
                return
            last = f"{status} {data[:200]!r}"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(
        f"POST 127.0.0.1:{port}{path} did not predict {EXPECTED} in {timeout:g}s (last: {last})"
    )


def wait_healthz(port: int, timeout: float) -> float:
    """Poll GET /healthz until it answers 200; the perf_counter() when it did."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            status, _ = request(port, "GET", "/healthz")
            if status == 200:
                return time.perf_counter()
        except (OSError, http.client.HTTPException):
            pass
        if time.perf_counter() >= deadline:
            raise BenchError(f"127.0.0.1:{port}/healthz did not answer 200 in {timeout:g}s")
        time.sleep(0.002)


# -- wrk ----------------------------------------------------------------------------------------


def wrk(url: str, script: Path, connections: int, seconds: float) -> WrkResult:
    """`wrk -t1 --latency` pinned to CLIENT_CORE, posting the sample."""
    duration = max(1, round(seconds))
    command = [
        "taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
        "--latency", "-s", str(script), url,
    ]  # fmt: skip
    return parse_wrk(run(command, timeout=duration + 30))


def measure(url: str, script: Path, connections: int, duration: float, warmup: float) -> WrkResult:
    if warmup > 0:
        wrk(url, script, connections, warmup)
    result = wrk(url, script, connections, duration)
    progress(
        f"  {url} c={connections}: {result.requests_per_s:.0f} req/s, p50 {result.p50_ms:.3f} ms"
    )
    return result


def cpu_ns(container: str) -> int | None:
    """The CPU time the container's processes have used, in ns (cgroup v1 or v2); None
    when this host keeps it elsewhere."""
    full = run(["docker", "inspect", "--format", "{{.Id}}", container]).strip()
    for path, scale in (
        (f"/sys/fs/cgroup/cpuacct/docker/{full}/cpuacct.usage", 1),
        (f"/sys/fs/cgroup/system.slice/docker-{full}.scope/cpu.stat", 1000),
        (f"/sys/fs/cgroup/docker/{full}/cpu.stat", 1000),
    ):
        with contextlib.suppress(OSError, ValueError):
            text = Path(path).read_text()
            if scale == 1:
                return int(text)
            found = re.search(r"^usage_usec (\d+)", text, re.MULTILINE)
            if found:
                return int(found.group(1)) * scale
    return None


def wrk_cpu(
    url: str, script: Path, connections: int, seconds: float, container: str
) -> tuple[WrkResult, float | None]:
    """wrk, and the container's CPU microseconds per request meanwhile (None: unknown)."""
    before = cpu_ns(container)
    result = wrk(url, script, connections, seconds)
    after = cpu_ns(container)
    if before is None or after is None or not result.requests:
        return result, None
    return result, (after - before) / 1000 / result.requests


def batch_sizes(url: str, script: Path, seconds: float) -> list[int]:
    """The batch sizes PROBES requests ran in, sent one by one while wrk loads url at
    BATCH_CONNECTIONS connections."""
    host_port, _, path = url.removeprefix("http://").partition("/")
    port = int(host_port.rpartition(":")[2])
    sizes: list[int] = []
    load = threading.Thread(target=wrk, args=(url, script, BATCH_CONNECTIONS, seconds))
    load.start()
    try:
        time.sleep(min(1.0, seconds / 4))  # wrk's connections are open and busy
        for _ in range(PROBES):
            status, data = request(port, "POST", "/" + path, BODY)
            if status == 200:
                sizes.append(int(json.loads(data)["batch_size"]))
    finally:
        load.join()
    return sizes


# -- docker ---------------------------------------------------------------------------------------


def instance_container(project: str, node: str = NODE) -> str:
    out = run([
        "docker", "ps", "--filter", f"label={PROJECT_LABEL}={project}",
        "--filter", f"label={NODE_LABEL}={node}", "--format", "{{.ID}}",
    ]).split()  # fmt: skip
    if len(out) != 1:
        raise BenchError(f"expected one running container of node {node}, found {len(out)}")
    return out[0]


def published_port(container: str) -> int:
    out = run(["docker", "port", container]).split()
    for word in out:
        host, _, port = word.rpartition(":")
        if host == HOST and port.isdigit():
            return int(port)
    raise BenchError(f"container {container} publishes no port on {HOST}: {out}")


class InProcess:
    """The in-process loop's container (see IN_PROCESS): asked for one slice at a time."""

    def __init__(self, process: subprocess.Popen[bytes], first: dict[str, Any]) -> None:
        self.process = process
        self.load_s: float = first["load_s"]
        self.loads: list[float] = first["loads"]
        self.cpu_us: list[float] = []  # CPU microseconds per call, one per slice

    def rate(self, seconds: float) -> float:
        """Calls per second of the loop run for `seconds` now."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"%g\n" % seconds)
        self.process.stdin.flush()
        answer = read_line(self.process, seconds + 30)
        self.cpu_us.append(float(answer["cpu"]) * 1e6 / float(answer["calls"]))
        return float(answer["calls"]) / float(answer["elapsed"])


def read_line(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The next JSON line the process prints, within `timeout` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else b""
    if not line:
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        raise BenchError(f"the in-process loop stopped or did not answer: {stderr.strip()}")
    answer: dict[str, Any] = json.loads(line)
    return answer


@contextlib.contextmanager
def in_process(image: str, project: str, warmup: float, loads: int) -> Iterator[InProcess]:
    """Start the in-process loop in the node's image, after `loads` timed checkpoint loads."""
    name = f"{project}-inprocess"
    process = subprocess.Popen(
        [
            "docker", "run", "-i", "--rm", "--name", name, "--cpuset-cpus", INSTANCE_CORE,
            "--network", "none", "--label", f"{BENCH_LABEL}={project}", image,
            "python3", "-c", IN_PROCESS, str(warmup), str(loads),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )  # fmt: skip
    try:
        first = read_line(process, warmup + 120)
        if first["species_name"] != EXPECTED:
            raise BenchError(f"the model predicted {first['species_name']!r}, not {EXPECTED!r}")
        yield InProcess(process, first)
    finally:
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()  # the loop ends with its input
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
            process.wait(STOP_TIMEOUT)


def memory(container: str) -> tuple[str, str]:
    """docker stats' MemUsage, and the peak RSS (VmHWM) summed over the container's processes
    ('-' when /proc cannot be read)."""
    usage = run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container])
    usage = usage.strip().split(" / ")[0]
    pids = run(["docker", "top", container, "-eo", "pid"]).split()[1:]  # host pids
    total_kb = 0
    try:
        for pid in pids:
            status = Path(f"/proc/{pid}/status").read_text()
            found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
            total_kb += int(found.group(1)) if found else 0
    except (OSError, ValueError):
        return usage, "-"
    return usage, f"{total_kb / 1024:.1f}MiB"


def started_at(container: str) -> float:
    """The container's State.StartedAt as a Unix time (Docker gives nanoseconds, RFC 3339)."""
    text = run(["docker", "inspect", "--format", "{{.State.StartedAt}}", container]).strip()
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        raise BenchError(f"cannot read StartedAt {text!r}")
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    whole = datetime.fromisoformat(match.group(1) + zone).timestamp()
    return whole + float("0." + (match.group(2) or "0"))


def restart_times(container: str) -> tuple[float, float]:
    """Stop, then `docker start` the container; seconds to /healthz 200 from just before
    `docker start`, and from the process start (State.StartedAt)."""
    run(["docker", "stop", "-t", "10", container], timeout=30)
    before = time.perf_counter()
    wall_before = time.time()
    run(["docker", "start", container])
    port = published_port(container)  # an ephemeral host port may change on a start
    healthy = wait_healthz(port, HEALTHY_TIMEOUT)
    wall_healthy = wall_before + (healthy - before)
    return healthy - before, wall_healthy - started_at(container)


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Round:
    """One round: the instance and the alias at 16 connections, and the in-process rate
    around them (the mean of the slices before and after)."""

    inproc_rate: float
    instance: WrkResult
    alias: WrkResult
    batched: WrkResult | None = None  # iris-batched at BATCH_CONNECTIONS
    batched_alias: WrkResult | None = None
    # CPU microseconds per request in the instance's container (None: unknown), and per
    # call in the in-process loop (the slices around the round): figures that others' load
    # on the machine moves far less than requests/s.
    instance_cpu: float | None = None
    batched_cpu: float | None = None
    inproc_cpu: float | None = None

    @property
    def instance_ratio(self) -> float:
        return self.instance.requests_per_s / self.inproc_rate

    @property
    def alias_ratio(self) -> float:
        return self.alias.requests_per_s / self.inproc_rate

    @property
    def batched_ratio(self) -> float:
        assert self.batched is not None
        return self.batched.requests_per_s / self.inproc_rate

    @property
    def batched_alias_ratio(self) -> float:
        assert self.batched_alias is not None
        return self.batched_alias.requests_per_s / self.inproc_rate


@dataclass
class Figures:
    """Everything the report prints."""

    busy: float
    load_s: float
    rounds: list[Round]
    instance_1: WrkResult
    alias_1: WrkResult
    mem_usage: str
    mem_peak: str
    start_cmd: list[float]
    start_proc: list[float]
    userland_proxy: bool
    max_delay: float = 0.0  # the batched node's, seconds
    batched_1: WrkResult | None = None
    sizes_instance: list[int] | None = None
    sizes_alias: list[int] | None = None


def bench(
    duration: float, warmup: float, restarts: int, rounds: int, batched: bool
) -> tuple[str, Figures]:
    project = f"pynode-bench-{secrets.token_hex(3)}"
    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pynode-bench-")))
        repo, state_dir = temp / "repo", temp / "state"
        max_delay = make_repo(repo, batched)
        script = temp / "post.lua"
        script.write_text(WRK_SCRIPT)
        busy = cpu_busy()
        stack.callback(cleanup_project, repo, project, state_dir)  # runs after serve has stopped
        progress(f"project {project}: applying {NODE} (may download wheels and build)")
        run(
            gitops_nodes(
                "apply",
                "--auto-approve",
                str(repo),
                "--project",
                project,
                "--state-dir",
                str(state_dir),
            ),
            timeout=APPLY_TIMEOUT,
            cwd=REPO_ROOT,
        )
        serve = stack.enter_context(start_serve(repo, project, state_dir, temp / "serve.log"))
        container = instance_container(project)
        image = run(["docker", "inspect", "--format", "{{.Config.Image}}", container]).strip()
        run(["docker", "update", "--cpuset-cpus", INSTANCE_CORE, container])
        port = published_port(container)
        proxied = userland_proxy_running(port)
        alias_path = f"/aliases/{ALIAS}/"
        wait_prediction(port, "/", READY_TIMEOUT)
        wait_prediction(serve.port, alias_path, READY_TIMEOUT, serve.check_running)

        instance_url = f"http://{HOST}:{port}/"
        alias_url = f"http://{HOST}:{serve.port}{alias_path}"
        batched_url = batched_alias_url = batched_container = ""
        if batched:
            batched_container = instance_container(project, BATCHED_NODE)
            run(["docker", "update", "--cpuset-cpus", INSTANCE_CORE, batched_container])
            batched_port = published_port(batched_container)
            batched_path = f"/aliases/{BATCHED_ALIAS}/"
            wait_prediction(batched_port, "/", READY_TIMEOUT)
            wait_prediction(serve.port, batched_path, READY_TIMEOUT, serve.check_running)
            batched_url = f"http://{HOST}:{batched_port}/"
            batched_alias_url = f"http://{HOST}:{serve.port}{batched_path}"
        progress(f"in-process loop in {image} (core {INSTANCE_CORE}): timing checkpoint loads")
        inproc = stack.enter_context(in_process(image, project, warmup, 3))
        progress(f"  checkpoint loads {inproc.loads}")
        for url in (instance_url, alias_url):
            wrk(url, script, 16, warmup)
        for url in (batched_url, batched_alias_url) if batched else ():
            wrk(url, script, BATCH_CONNECTIONS, warmup)
        measured: list[Round] = []
        before = inproc.rate(duration)
        for number in range(1, rounds + 1):
            instance, instance_cpu = wrk_cpu(instance_url, script, 16, duration, container)
            alias = wrk(alias_url, script, 16, duration)
            many = many_alias = many_cpu = None
            if batched:
                many, many_cpu = wrk_cpu(
                    batched_url, script, BATCH_CONNECTIONS, duration, batched_container
                )
                many_alias = wrk(batched_alias_url, script, BATCH_CONNECTIONS, duration)
            after = inproc.rate(duration)
            inproc_cpu = statistics.mean(inproc.cpu_us[-2:])
            around = (before + after) / 2
            slices = (instance, alias, many, many_alias, instance_cpu, many_cpu, inproc_cpu)
            measured.append(Round(around, *slices))
            progress(
                f"round {number}/{rounds}: in-process {before:.0f} and {after:.0f} calls/s, "
                f"instance {instance.requests_per_s:.0f} req/s, alias "
                f"{alias.requests_per_s:.0f} req/s"
                + (
                    f", batched {many.requests_per_s:.0f} and through its alias "
                    f"{many_alias.requests_per_s:.0f} req/s"
                    if many is not None and many_alias is not None
                    else ""
                )
            )
            before = after
        instance_1 = measure(instance_url, script, 1, duration, warmup)
        alias_1 = measure(alias_url, script, 1, duration, warmup)
        batched_1 = sizes_instance = sizes_alias = None
        if batched:
            batched_1 = measure(batched_url, script, 1, duration, warmup)
            sizes_instance = batch_sizes(batched_url, script, duration * 2)
            sizes_alias = batch_sizes(batched_alias_url, script, duration * 2)
            progress(f"  batch sizes seen: instance {sizes_instance}, alias {sizes_alias}")
        serve.check_running()
        mem_usage, mem_peak = memory(container)

        start_cmd, start_proc = [], []
        for i in range(restarts):
            from_cmd, from_proc = restart_times(container)
            start_cmd.append(from_cmd)
            start_proc.append(from_proc)
            progress(f"  restart {i + 1}/{restarts}: {from_cmd:.3f} s ({from_proc:.3f} s)")
        progress("cleaning up")
    figures = Figures(
        busy, inproc.load_s, measured, instance_1, alias_1,
        mem_usage, mem_peak, start_cmd, start_proc, proxied,
        max_delay, batched_1, sizes_instance, sizes_alias,
    )  # fmt: skip
    return project, figures


# -- report ---------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(f: Figures, project: str, duration: float, restarts: int) -> None:
    start = statistics.median(f.start_cmd)
    start_proc = statistics.median(f.start_proc)
    start_target = TARGET_START_S + f.load_s
    print(
        f"Python node {NODE} (example-repo), project {project}, wrk -t1 {duration:g}s on core "
        f"{CLIENT_CORE} with the balancer; instance and in-process loop on core {INSTANCE_CORE}; "
        f"CPUs {f.busy:.0%} busy before the run"
    )
    if f.busy > BUSY_WARNING:
        print(f"warning: over {BUSY_WARNING:.0%} busy before the run: figures are unreliable")
    if f.userland_proxy:
        print(
            "warning: the instance's published port goes through docker-proxy (the engine runs "
            "with its userland proxy): expect about 30% fewer requests/s than without it"
        )
    print(
        f"{'round':<6} {'in-process/s':>12} {'instance/s':>11} {'ratio':>6} "
        f"{'alias/s':>9} {'ratio':>6}   (16 connections)"
    )
    for number, r in enumerate(f.rounds, 1):
        print(
            f"{number:<6} {r.inproc_rate:>12.0f} {r.instance.requests_per_s:>11.0f} "
            f"{r.instance_ratio:>6.2f} {r.alias.requests_per_s:>9.0f} {r.alias_ratio:>6.2f}"
        )
    print(f"{'case':<28} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'fail':>5}")
    last = f.rounds[-1]
    for name, w in (
        ("instance, 16 conns (last)", last.instance),
        ("instance, 1 conn", f.instance_1),
        ("alias /aliases/iris/, 16 (last)", last.alias),
        ("alias /aliases/iris/, 1", f.alias_1),
    ):
        print(
            f"{name:<28} {w.requests_per_s:>8.0f} {w.p50_ms:>7.3f} {w.p99_ms:>7.3f} {w.failures:>5}"
        )
    print(f"memory: {f.mem_usage} (docker stats after the load), peak RSS {f.mem_peak} (VmHWM)")
    print(f"checkpoint load (import sklearn + pickle.load, median of 3): {f.load_s:.3f} s")
    print(
        f"start to /healthz 200 (median of {restarts}): {start:.3f} s from `docker start`, "
        f"{start_proc:.3f} s from the process start (StartedAt)"
    )
    instance_ratio = statistics.median(r.instance_ratio for r in f.rounds)
    alias_ratio = statistics.median(r.alias_ratio for r in f.rounds)
    rounds = len(f.rounds)
    print(f"{'target':<44} {'value':>8}  result")
    rows = (
        (f"instance / in-process >= {TARGET_INSTANCE} (median of {rounds})",
         f"{instance_ratio:.2f}", instance_ratio >= TARGET_INSTANCE),
        (f"alias / in-process >= {TARGET_ALIAS} (median of {rounds})", f"{alias_ratio:.2f}",
         alias_ratio >= TARGET_ALIAS),
        (f"instance p50 at 1 conn < {TARGET_P50_MS} ms", f"{f.instance_1.p50_ms:.3f}",
         f.instance_1.p50_ms < TARGET_P50_MS),
        (f"start to healthy < {TARGET_START_S} + {f.load_s:.3f} s", f"{start:.3f}",
         start < start_target),
    )  # fmt: skip
    for name, value, ok in rows:
        print(f"{name:<44} {value:>8}  {verdict(ok)}")
    if f.batched_1 is not None:
        report_batched(f)


def report_batched(f: Figures) -> None:
    """The batched twin's figures against the same in-process single-call rate."""
    assert f.batched_1 is not None
    delay_ms = f.max_delay * 1000
    print(
        f"\nbatched node {BATCHED_NODE} (maxSize 64, maxDelay {delay_ms:g} ms), "
        f"{BATCH_CONNECTIONS} connections, against the in-process single-call rate"
    )
    print(
        f"{'round':<6} {'in-process/s':>12} {'batched/s':>10} {'ratio':>6} {'p99 ms':>7} "
        f"{'alias/s':>9} {'ratio':>6}"
    )
    for number, r in enumerate(f.rounds, 1):
        assert r.batched is not None and r.batched_alias is not None
        print(
            f"{number:<6} {r.inproc_rate:>12.0f} {r.batched.requests_per_s:>10.0f} "
            f"{r.batched_ratio:>6.2f} {r.batched.p99_ms:>7.2f} "
            f"{r.batched_alias.requests_per_s:>9.0f} {r.batched_alias_ratio:>6.2f}"
        )
    cpu_rounds = [r for r in f.rounds if r.batched_cpu and r.instance_cpu and r.inproc_cpu]
    if cpu_rounds:
        inproc_cpu = statistics.median(r.inproc_cpu or 0 for r in cpu_rounds)
        instance_cpu = statistics.median(r.instance_cpu or 0 for r in cpu_rounds)
        batched_cpu = statistics.median(r.batched_cpu or 0 for r in cpu_rounds)
        print(
            f"CPU per request (median of {len(cpu_rounds)}; others' load moves it far less than "
            f"requests/s): in-process {inproc_cpu:.1f} us a call, instance {instance_cpu:.1f} "
            f"us (x{inproc_cpu / instance_cpu:.2f} of in-process), batched {batched_cpu:.1f} us "
            f"(x{inproc_cpu / batched_cpu:.2f})"
        )
    ratio = statistics.median(r.batched_ratio for r in f.rounds)
    alias_ratio = statistics.median(r.batched_alias_ratio for r in f.rounds)
    p99 = statistics.median(r.batched.p99_ms for r in f.rounds if r.batched is not None)
    p50_limit = f.instance_1.p50_ms + delay_ms
    for name, sizes in (("instance", f.sizes_instance), ("alias", f.sizes_alias)):
        if sizes:
            print(
                f"batch sizes seen by {len(sizes)} probes at {BATCH_CONNECTIONS} connections "
                f"({name}): median {statistics.median(sizes):g}, min {min(sizes)}, "
                f"max {max(sizes)}"
            )
    rounds = len(f.rounds)
    rows = (
        (f"batched / in-process >= {TARGET_BATCHED} (median of {rounds})", f"{ratio:.2f}",
         ratio >= TARGET_BATCHED),
        (f"  moonshot >= {MOONSHOT_BATCHED}", f"{ratio:.2f}", ratio >= MOONSHOT_BATCHED),
        (f"batched p99 at {BATCH_CONNECTIONS} <= {delay_ms:g} + {TARGET_BATCHED_P99_MS:g} ms",
         f"{p99:.2f}", p99 <= delay_ms + TARGET_BATCHED_P99_MS),
        (f"batched p50 at 1 conn <= {f.instance_1.p50_ms:.3f} + {delay_ms:g} ms",
         f"{f.batched_1.p50_ms:.3f}", f.batched_1.p50_ms <= p50_limit),
        (f"batched alias / in-process >= {TARGET_BATCHED_ALIAS} (median)",
         f"{alias_ratio:.2f}", alias_ratio >= TARGET_BATCHED_ALIAS),
    )  # fmt: skip
    print(f"{'target':<44} {'value':>8}  result")
    for name, value, ok in rows:
        print(f"{name:<44} {value:>8}  {verdict(ok)}")


# -- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--duration", type=float, default=2.0, help="seconds per slice and wrk run (2)"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (1)")
    parser.add_argument("--restarts", type=int, default=3, help="start-to-healthy runs (3)")
    parser.add_argument(
        "--rounds", type=int, default=10, help="instance/alias/in-process rounds (10)"
    )
    parser.add_argument(
        "--no-batched",
        dest="batched",
        action="store_false",
        help="leave out the batched node (iris-batched)",
    )
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 0 or args.restarts < 1 or args.rounds < 1:
        parser.error("--duration must be >= 1, --warmup >= 0, --restarts and --rounds >= 1")

    def body() -> None:
        require("docker", "wrk", "taskset")
        if (os.cpu_count() or 1) < 2:
            raise BenchError("needs two cores (the instance on core 0, wrk on core 1)")
        require_base_image()
        with signals_interrupt():
            project, figures = bench(
                args.duration, args.warmup, args.restarts, args.rounds, args.batched
            )
        report(figures, project, args.duration, args.restarts)

    return run_reporting(body, "everything the benchmark created was removed")


if __name__ == "__main__":
    sys.exit(main())
