"""Benchmark the balancer's data plane against nginx and HAProxy as reverse proxies, in one run.

Not a test: it prints the figures that the balancer issue's "Done when" asks for. Everything
runs on loopback (127.0.0.1) from a temporary folder (configs, pid files, logs), and every
process it starts is stopped on the way out, also on Ctrl-C, SIGTERM or an error:

1. a backend: nginx, one worker, pinned to core 1, answering a ~60-byte JSON body;
2. one core each, `wrk -t1 -c<connections> --latency` pinned to core 1 and the proxy under test
   pinned to core 0, against: (a) the backend alone, (b) nginx as a reverse proxy (one worker,
   keep-alive upstream), (c) HAProxy (one thread, `http-reuse always`), (d) the balancer
   (`gitops-nodes serve --workers 1`) through an alias URL, with every feature on: active
   health checks every second, metrics and request ids (both always on);
3. two workers, nothing pinned but the backend (the proxies and wrk share both cores):
   nginx with two worker processes against `gitops-nodes serve --workers 2` (SO_REUSEPORT),
   `wrk -t2`;
4. the balancer's peak memory (VmHWM), summed over its workers;
5. the resident memory (VmRSS) of one balancer worker holding 1,000 idle kept-alive client
   connections (each served one request first), with its client limits on (the defaults),
   and of the compared checkout's balancer too.

Each target is warmed up with wrk before it is measured. With --rounds N every target of a part
is measured N times, interleaved with the others (all of them stay up meanwhile, idle when not
measured), and the median round counts: load from elsewhere then spreads over all targets.
Figures are ratios within one run; absolute numbers depend on the machine and its other load.

    python3 benchmarks/balancer_bench.py [--duration 10] [--connections 32] [--rounds 1]
        [--compare-with CHECKOUT]  (another checkout's balancer, measured beside this one)
        [--idle-clients 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from common import (
    HOST,
    REPO_ROOT,
    BenchError,
    WrkResult,
    cpu_busy,
    free_port,
    parse_wrk,
    require,
    run_reporting,
    signals_interrupt,
)

from balancer.table import (
    AliasEntry,
    Endpoint,
    HealthSettings,
    NodeEntry,
    RoutingTable,
    write_table,
)

PROXY_CORE = "0"
CLIENT_CORE = "1"  # wrk and the backend
PROJECT = "bench"
ALIAS = "bench-alias"
NODE = "bench-node"
REQUEST_PATH = "/predict"
BODY = '{"output":{"label":"setosa","score":0.9731},"node":"bench-a"}'
TARGET_RATIO = 0.6
BUSY_WARNING = 0.10
READY_TIMEOUT = 15.0
HEALTHY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


# -- wrk ---------------------------------------------------------------------------------


def run_wrk(
    url: str, duration: float, connections: int, threads: int, core: str | None
) -> WrkResult:
    """One wrk run (pinned to core unless None), bounded by its duration plus a margin."""
    seconds = max(1, round(duration))
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        url,
    ]
    if core is not None:
        command = ["taskset", "-c", core, *command]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish: {' '.join(command)}") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


@dataclass(frozen=True)
class Measured:
    """A target's median round (by requests/s) and the requests/s of every round, and the
    median CPU time its processes spent per request (None for a target not watched)."""

    median: WrkResult
    rounds: tuple[float, ...]
    failures: int  # socket errors and non-2xx responses over all rounds
    cpu_us: float | None = None

    @classmethod
    def of(cls, results: Sequence[WrkResult], cpu_us: Sequence[float] = ()) -> Measured:
        ordered = sorted(results, key=lambda r: r.requests_per_s)
        return cls(
            median=ordered[(len(ordered) - 1) // 2],
            rounds=tuple(r.requests_per_s for r in results),
            failures=sum(r.failures for r in results),
            cpu_us=sorted(cpu_us)[(len(cpu_us) - 1) // 2] if cpu_us else None,
        )


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group pgid (a server's
    master and its workers: each server runs in a session of its own)."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# -- processes ---------------------------------------------------------------------------


@dataclass
class Server:
    """A server process this script started, in a session (process group) of its own."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check_running(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to its whole group, SIGKILL after STOP_TIMEOUT; always reaps it."""
        _signal_group(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)
        # Forked workers may outlive their parent: kill whatever is left of the group.
        _signal_group(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class Processes:
    """Starts servers and stops every one of them when the `with` block ends, however."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()

    def start(self, name: str, command: Sequence[str], env: dict[str, str] | None = None) -> Server:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: Ctrl-C reaches us, we stop it
                cwd=self.workdir,
                env=env,
            )
        server = Server(name, process, log)
        self.servers.append(server)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self.servers:
            self.servers.remove(server)

    def stop_all(self) -> None:
        self.stop_all_but(0)

    def stop_all_but(self, keep: int) -> None:
        """Stop the servers started last, keeping the first `keep` of them."""
        while len(self.servers) > keep:
            self.servers.pop().stop()


def wait_for_port(server: Server, port: int, timeout: float = READY_TIMEOUT) -> None:
    """Poll until port accepts connections; fail early if the server exits."""
    deadline = time.monotonic() + timeout
    while True:
        server.check_running()
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        if time.monotonic() >= deadline:
            raise BenchError(f"{server.name} did not listen on {port} in {timeout:g}s")
        time.sleep(0.05)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=2.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_for_ok(server: Server, port: int, path: str, times: int = 1) -> None:
    """Poll until `times` GETs in a row (each on a new connection) answer 200 with BODY."""
    deadline = time.monotonic() + READY_TIMEOUT
    streak = 0
    last = ""
    while streak < times:
        server.check_running()
        try:
            status, body = http_get(port, path)
            ok = status == 200 and body.decode(errors="replace") == BODY
            last = f"{status} {body[:200]!r}"
        except OSError as exc:
            ok, last = False, repr(exc)
        streak = streak + 1 if ok else 0
        if streak < times:
            if time.monotonic() >= deadline:
                raise BenchError(f"{server.name}: GET {path} never answered 200: {last}")
            time.sleep(0.02 if ok else 0.1)


def wait_for_healthy(server: Server, admin_port: int, times: int) -> None:
    """Poll /-/status until the node and its instance report Healthy `times` times in a row,
    and with --workers every worker counts the instance Healthy (its `workers` list)."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    streak = 0
    last = ""
    while streak < times:
        server.check_running()
        try:
            status, body = http_get(admin_port, "/-/status")
            document = json.loads(body) if status == 200 else {}
            nodes = {n["name"]: n for n in document.get("nodes", [])}
            node = nodes.get(NODE, {})
            instances = [i["status"] for i in node.get("instances", [])]
            names = [i["instance"] for i in node.get("instances", [])]
            healthy = node.get("status") == "Healthy" and instances == ["Healthy"]
            healthy = healthy and all(
                set(names) <= set(w.get("healthy") or ()) for w in document.get("workers", [])
            )
            last = f"node {node.get('status')}, instances {instances}"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            healthy, last = False, repr(exc)
        streak = streak + 1 if healthy else 0
        if streak < times:
            if time.monotonic() >= deadline:
                raise BenchError(f"{server.name} not Healthy in {HEALTHY_TIMEOUT:g}s: {last}")
            time.sleep(0.02 if healthy else 0.2)


def pinned(core: str | None, command: Sequence[str]) -> list[str]:
    return ["taskset", "-c", core, *command] if core is not None else list(command)


# -- configurations ----------------------------------------------------------------------


def _nginx_parts(workdir: Path, name: str, workers: int) -> tuple[str, str]:
    """The main context and the common http settings of one nginx's configuration."""
    temp = workdir / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes {workers};\n"
        "daemon off;\n"
        "master_process on;\n"
        f"pid {workdir / name}.pid;\n"
        f"error_log {workdir / name}-error.log warn;\n"
        "events { worker_connections 4096; multi_accept on; }\n"
    ), (
        "access_log off;\n"
        "keepalive_requests 1000000;\n"  # the default 1000 would make wrk reconnect
        "keepalive_timeout 75s;\n"
        f"client_body_temp_path {temp}/client;\n"
        f"proxy_temp_path {temp}/proxy;\n"
        f"fastcgi_temp_path {temp}/fastcgi;\n"
        f"uwsgi_temp_path {temp}/uwsgi;\n"
        f"scgi_temp_path {temp}/scgi;\n"
    )


def nginx_backend_conf(workdir: Path, port: int) -> Path:
    main, http = _nginx_parts(workdir, "backend", 1)
    body = BODY.replace("'", "\\'")
    text = (
        main + "http {\n" + http + "  server {\n"
        f"    listen {HOST}:{port} backlog=4096;\n"
        "    location / {\n"
        "      default_type application/json;\n"
        f"      return 200 '{body}';\n"
        "    }\n"
        "  }\n"
        "}\n"
    )
    path = workdir / "backend.conf"
    path.write_text(text)
    return path


def nginx_proxy_conf(workdir: Path, name: str, port: int, backend_port: int, workers: int) -> Path:
    main, http = _nginx_parts(workdir, name, workers)
    text = (
        main + "http {\n" + http + "  upstream backend {\n"
        f"    server {HOST}:{backend_port};\n"
        "    keepalive 64;\n"
        "    keepalive_requests 1000000;\n"
        "  }\n"
        "  server {\n"
        f"    listen {HOST}:{port} backlog=4096{' reuseport' if workers > 1 else ''};\n"
        "    location / {\n"
        "      proxy_pass http://backend;\n"
        "      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n'
        "    }\n"
        "  }\n"
        "}\n"
    )
    path = workdir / f"{name}.conf"
    path.write_text(text)
    return path


def haproxy_conf(workdir: Path, port: int, backend_port: int) -> Path:
    text = (
        "global\n"
        "  nbthread 1\n"
        "  maxconn 4096\n"
        f"  pidfile {workdir}/haproxy.pid\n"
        "defaults\n"
        "  mode http\n"
        "  option http-keep-alive\n"
        "  http-reuse always\n"
        "  timeout connect 5s\n"
        "  timeout client 30s\n"
        "  timeout server 30s\n"
        "  timeout http-keep-alive 75s\n"
        "frontend fe\n"
        f"  bind {HOST}:{port}\n"
        "  default_backend be\n"
        "backend be\n"
        f"  server backend {HOST}:{backend_port}\n"
    )
    path = workdir / "haproxy.cfg"
    path.write_text(text)
    return path


def balancer_table(backend_port: int) -> RoutingTable:
    """alias -> node -> the backend, with HTTP health checks every second."""
    health = HealthSettings(path="/", interval=1.0, timeout=1.0)
    node = NodeEntry(
        endpoints=(Endpoint(f"{NODE}-0", HOST, backend_port),),
        min_healthy=1,
        health=health,
    )
    return RoutingTable(
        generation=1,
        nodes=MappingProxyType({NODE: node}),
        aliases=MappingProxyType({ALIAS: AliasEntry(((NODE, 100),))}),
    )


# -- memory ------------------------------------------------------------------------------


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in KiB; 0 when it has gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def children_of(pid: int) -> list[int]:
    """Direct children of pid, from /proc/*/stat (the kernel's children file may be absent)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


# -- the run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    duration: float
    warmup: float
    connections: int
    rounds: int
    busy_before: float = 0.0
    compare_with: Path | None = None  # another checkout's balancer, measured beside this one
    idle_clients: int = 1000


def start_balancer(
    procs: Processes,
    workdir: Path,
    backend_port: int,
    workers: int,
    core: str | None,
    root: Path = REPO_ROOT,
) -> tuple[Server, int]:
    other = "" if root == REPO_ROOT else "-other"
    state_dir = workdir / f"state-{workers}{other}"
    write_table(state_dir / PROJECT / "routing-table.json", balancer_table(backend_port))
    port, admin_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "gitops_nodes",
        "serve",
        "--state-dir",
        str(state_dir),
        "--project",
        PROJECT,
        "--port",
        str(port),
        "--admin-port",
        str(admin_port),
        "--workers",
        str(workers),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    server = procs.start(f"balancer-{workers}w{other}", pinned(core, command), env=env)
    wait_for_port(server, port)
    wait_for_port(server, admin_port)
    wait_for_healthy(server, admin_port, times=1 if workers == 1 else 10)
    wait_for_ok(server, port, f"/aliases/{ALIAS}{REQUEST_PATH}", times=1 if workers == 1 else 10)
    return server, port


def balancer_memory_kib(server: Server, workers: int) -> tuple[int, list[int]]:
    """(the launched process's VmHWM, each worker's VmHWM); with one worker they are one."""
    own = vm_hwm_kib(server.process.pid)
    if workers == 1:
        return own, [own]
    return own, [vm_hwm_kib(pid) for pid in children_of(server.process.pid)]


def vm_rss_kib(pid: int) -> int:
    """The process's resident set size now (VmRSS), in KiB; 0 when it has gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def idle_client_memory(server: Server, port: int, clients: int) -> tuple[int, int]:
    """(VmRSS before, VmRSS with `clients` idle connections open) of a one-worker balancer.

    Each connection is served one request through the alias first, so it is a kept-alive
    client between requests (the header timeout closes connections that never send one).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < clients + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, clients + 256), hard))
    request = f"GET /aliases/{ALIAS}{REQUEST_PATH} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    before = vm_rss_kib(server.process.pid)
    sockets: list[socket.socket] = []
    try:
        for _ in range(clients):
            sock = socket.create_connection((HOST, port), timeout=10)
            sockets.append(sock)
            sock.sendall(request)
            answer = b""
            while not answer.endswith(BODY.encode()):
                chunk = sock.recv(65536)
                if not chunk:
                    raise BenchError(f"the balancer closed an idle-memory client: {answer!r}")
                answer += chunk
        time.sleep(0.5)  # let the balancer settle with all of them open and idle
        server.check_running()
        return before, vm_rss_kib(server.process.pid)
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class Target:
    """What one measurement drives: a URL, and the process group that answers it (whose CPU
    time per request is measured; None for the backend alone)."""

    name: str
    url: str
    pgid: int | None = None


def measure_rounds(
    targets: Sequence[Target], settings: Settings, threads: int, core: str | None
) -> dict[str, Measured]:
    """Measure every target once per round, interleaved (so load from elsewhere on the machine
    spreads over all of them), warming each up before its first round; keep each target's
    median round by requests/s, and its median CPU time per request.

    CPU time per request is the steadier figure on a busy machine: others' load takes the
    proxy's core away (fewer requests/s) without making each request cost more."""
    runs: dict[str, list[WrkResult]] = {t.name: [] for t in targets}
    cpu: dict[str, list[float]] = {t.name: [] for t in targets}
    for round_ in range(settings.rounds):
        for target in targets:
            label = f" (round {round_ + 1}/{settings.rounds})" if settings.rounds > 1 else ""
            print(f"  measuring {target.name}{label} ...", file=sys.stderr, flush=True)
            if round_ == 0 and settings.warmup > 0:
                run_wrk(target.url, settings.warmup, settings.connections, threads, core)
            before = group_cpu_seconds(target.pgid) if target.pgid else 0.0
            result = run_wrk(target.url, settings.duration, settings.connections, threads, core)
            if target.pgid and result.requests:
                spent = group_cpu_seconds(target.pgid) - before
                cpu[target.name].append(spent / result.requests * 1e6)
            runs[target.name].append(result)
    return {name: Measured.of(results, cpu[name]) for name, results in runs.items()}


def start_nginx_proxy(
    procs: Processes, workdir: Path, backend_port: int, workers: int, core: str | None
) -> tuple[Server, int]:
    port = free_port()
    name = f"nginx-proxy-{workers}w"
    conf = nginx_proxy_conf(workdir, name, port, backend_port, workers)
    nginx = procs.start(name, pinned(core, ["nginx", "-c", str(conf)]))
    wait_for_port(nginx, port)
    wait_for_ok(nginx, port, REQUEST_PATH, times=1 if workers == 1 else 10)
    return nginx, port


@dataclass(frozen=True)
class Memory:
    """A balancer's peak memory over its workers, and one worker's RSS with idle clients."""

    peak: tuple[int, list[int]]
    idle: dict[str, tuple[int, int]]  # by balancer: (RSS before, RSS with idle clients)


def one_core(
    procs: Processes, workdir: Path, backend_port: int, settings: Settings
) -> tuple[dict[str, Measured], Memory]:
    """The backend alone, then nginx, HAProxy and the balancer, each on core PROXY_CORE."""
    nginx, nginx_port = start_nginx_proxy(procs, workdir, backend_port, 1, PROXY_CORE)
    haproxy_port = free_port()
    conf = haproxy_conf(workdir, haproxy_port, backend_port)
    haproxy = procs.start("haproxy", pinned(PROXY_CORE, ["haproxy", "-db", "-f", str(conf)]))
    wait_for_port(haproxy, haproxy_port)
    wait_for_ok(haproxy, haproxy_port, REQUEST_PATH)
    balancer, balancer_port = start_balancer(procs, workdir, backend_port, 1, PROXY_CORE)
    targets = [
        Target("backend alone", f"http://{HOST}:{backend_port}{REQUEST_PATH}"),
        Target("nginx", f"http://{HOST}:{nginx_port}{REQUEST_PATH}", nginx.process.pid),
        Target("HAProxy", f"http://{HOST}:{haproxy_port}{REQUEST_PATH}", haproxy.process.pid),
        Target(
            "balancer",
            f"http://{HOST}:{balancer_port}/aliases/{ALIAS}{REQUEST_PATH}",
            balancer.process.pid,
        ),
    ]
    balancers = [("balancer", balancer, balancer_port)]
    if settings.compare_with is not None:
        other, other_port = start_balancer(
            procs, workdir, backend_port, 1, PROXY_CORE, settings.compare_with
        )
        targets.append(
            Target(
                "balancer (compared)",
                f"http://{HOST}:{other_port}/aliases/{ALIAS}{REQUEST_PATH}",
                other.process.pid,
            )
        )
        balancers.append(("balancer (compared)", other, other_port))
    results = measure_rounds(targets, settings, threads=1, core=CLIENT_CORE)
    balancer.check_running()
    peak = balancer_memory_kib(balancer, 1)
    idle = {}
    for label, server, port in balancers:
        print(f"  {label}: {settings.idle_clients} idle clients ...", file=sys.stderr, flush=True)
        idle[label] = idle_client_memory(server, port, settings.idle_clients)
    procs.stop_all_but(1)  # the backend stays for the two-worker part
    return results, Memory(peak, idle)


def two_workers(
    procs: Processes, workdir: Path, backend_port: int, settings: Settings
) -> tuple[dict[str, Measured], tuple[int, list[int]]]:
    """nginx with two worker processes against the balancer with two, neither pinned."""
    nginx, nginx_port = start_nginx_proxy(procs, workdir, backend_port, 2, None)
    balancer, balancer_port = start_balancer(procs, workdir, backend_port, 2, None)
    targets = [
        Target("nginx, 2 workers", f"http://{HOST}:{nginx_port}{REQUEST_PATH}", nginx.process.pid),
        Target(
            "balancer, 2 workers",
            f"http://{HOST}:{balancer_port}/aliases/{ALIAS}{REQUEST_PATH}",
            balancer.process.pid,
        ),
    ]
    results = measure_rounds(targets, settings, threads=2, core=None)
    balancer.check_running()
    memory = balancer_memory_kib(balancer, 2)
    procs.stop_all_but(1)
    return results, memory


# -- report ------------------------------------------------------------------------------


def _ratio(numerator: Measured | None, denominator: Measured | None) -> str:
    if numerator is None or denominator is None or denominator.median.requests_per_s <= 0:
        return "n/a"
    return f"{numerator.median.requests_per_s / denominator.median.requests_per_s:.2f}"


def _cpu_ratio(numerator: Measured | None, denominator: Measured | None) -> str:
    """The throughput ratio that CPU time per request implies (denominator's cost over the
    numerator's): what the requests/s ratio would be with each proxy alone on its core."""
    if numerator is None or denominator is None or not numerator.cpu_us or not denominator.cpu_us:
        return "n/a"
    return f"{denominator.cpu_us / numerator.cpu_us:.2f}"


def print_table(title: str, results: dict[str, Measured]) -> None:
    print(title)
    rounds = max((len(m.rounds) for m in results.values()), default=1)
    spread = "   requests/s of each round" if rounds > 1 else ""
    header = f"  {'target':<22}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    header += f"{'CPU us/req':>12}"
    print(header + spread)
    print("  " + "-" * (len(header) - 2 + len(spread)))
    for name, m in results.items():
        r = m.median
        line = f"  {name:<22}{r.requests_per_s:>12,.0f}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}"
        line += f"{m.failures:>8}"
        line += f"{m.cpu_us:>12.1f}" if m.cpu_us is not None else f"{'':>12}"
        if rounds > 1:
            line += "   " + " ".join(f"{x:,.0f}" for x in m.rounds)
        print(line)


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def report(
    settings: Settings,
    single: dict[str, Measured],
    single_memory: Memory,
    double: dict[str, Measured],
    double_memory: tuple[int, list[int]],
) -> None:
    c, d = settings.connections, settings.duration
    print()
    busy = settings.busy_before
    print(f"CPU busy before the run (others' load): {busy:.0%} of {os.cpu_count()} cores", end="")
    print("  WARNING: not a quiet machine; try --rounds 3" if busy > BUSY_WARNING else "")
    if settings.rounds > 1:
        print(f"Each figure: the median of {settings.rounds} interleaved rounds by requests/s.")
    print_table(
        f"One core: proxy pinned to core {PROXY_CORE}; wrk -t1 -c{c} -d{d:g}s and the backend "
        f"(nginx, 1 worker) on core {CLIENT_CORE}",
        single,
    )
    balancer = single.get("balancer")
    ratio_nginx = _ratio(balancer, single.get("nginx"))
    verdict = ""
    if ratio_nginx != "n/a":
        met = float(ratio_nginx) >= TARGET_RATIO
        verdict = f"  (target >= {TARGET_RATIO}: {'met' if met else 'NOT met'})"
    print(f"  balancer/nginx   {ratio_nginx}{verdict}")
    print(f"  balancer/HAProxy {_ratio(balancer, single.get('HAProxy'))}")
    print(
        f"  by CPU time per request: balancer/nginx {_cpu_ratio(balancer, single.get('nginx'))},"
        f" balancer/HAProxy {_cpu_ratio(balancer, single.get('HAProxy'))}"
    )
    compared = single.get("balancer (compared)")
    if compared is not None:
        print(f"  compared ({settings.compare_with})/nginx {_ratio(compared, single.get('nginx'))}")
        print(f"  balancer/compared {_ratio(balancer, compared)}")
        print(
            "  by CPU time per request: compared/nginx"
            f" {_cpu_ratio(compared, single.get('nginx'))},"
            f" balancer/compared {_cpu_ratio(balancer, compared)}"
        )
    print()
    print_table(
        f"Two workers, NOT pinned: the proxy's 2 processes and wrk -t2 -c{c} -d{d:g}s share "
        f"both cores (the backend stays on core {CLIENT_CORE})",
        double,
    )
    ratio_two = _ratio(double.get("balancer, 2 workers"), double.get("nginx, 2 workers"))
    print(f"  balancer/nginx   {ratio_two}")
    cpu_two = _cpu_ratio(double.get("balancer, 2 workers"), double.get("nginx, 2 workers"))
    print(f"  by CPU time per request: balancer/nginx {cpu_two}")
    print()
    _, one = single_memory.peak
    parent, workers = double_memory
    print("Balancer peak memory (VmHWM, read after its measurements):")
    print(f"  1 worker:  {_mib(sum(one))}")
    parts = " + ".join(_mib(k) for k in workers)
    print(f"  2 workers: {_mib(sum(workers))} ({parts})")
    print(f"  (their parent, which only forks and waits: {_mib(parent)}, not counted)")
    print(
        f"One balancer worker's memory (VmRSS) with {settings.idle_clients:,} idle kept-alive"
        " client connections:"
    )
    for label, (before, during) in single_memory.idle.items():
        each = (during - before) / max(1, settings.idle_clients)
        print(
            f"  {label + ':':<22}{_mib(during)} ({_mib(before)} before them;"
            f" {each:.1f} KiB a connection)"
        )
    failures = sum(m.failures for m in [*single.values(), *double.values()])
    if failures:
        print(f"\nWARNING: {failures} failed requests (socket errors or non-2xx); see 'errors'.")


# -- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of wrk warming each target up (2)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each target this many times, interleaved, and keep the median (1)",
    )
    parser.add_argument(
        "--compare-with",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help="also measure the balancer of another checkout (e.g. main's), interleaved with "
        "this one's on the same core, in the one-core part",
    )
    parser.add_argument(
        "--idle-clients",
        type=int,
        default=1000,
        help="idle client connections for the memory figure (1000)",
    )
    args = parser.parse_args(argv)
    if args.duration < 1 or args.connections < 2 or args.rounds < 1 or args.idle_clients < 1:
        parser.error(
            "needs --duration >= 1, --connections >= 2, --rounds >= 1 and --idle-clients >= 1"
        )

    def body() -> None:
        require("wrk", "nginx", "haproxy", "taskset")
        if (os.cpu_count() or 1) < 2:
            raise BenchError(
                "needs at least two cores (proxy on core 0, wrk and backend on core 1)"
            )
        settings = Settings(
            args.duration,
            args.warmup,
            args.connections,
            args.rounds,
            cpu_busy(),
            args.compare_with.resolve() if args.compare_with else None,
            args.idle_clients,
        )
        with (
            signals_interrupt(),
            tempfile.TemporaryDirectory(prefix="balancer-bench-") as temp,
            Processes(Path(temp)) as procs,
        ):
            workdir = Path(temp)
            backend_port = free_port()
            conf = nginx_backend_conf(workdir, backend_port)
            backend = procs.start("backend", pinned(CLIENT_CORE, ["nginx", "-c", str(conf)]))
            wait_for_port(backend, backend_port)
            wait_for_ok(backend, backend_port, REQUEST_PATH)
            print(f"backend: {len(BODY)}-byte JSON; work files in {temp}", file=sys.stderr)
            single, single_memory = one_core(procs, workdir, backend_port, settings)
            double, double_memory = two_workers(procs, workdir, backend_port, settings)
            backend.check_running()
        report(settings, single, single_memory, double, double_memory)

    return run_reporting(body, "every server started was stopped")


if __name__ == "__main__":
    sys.exit(main())
