"""The swarm lab as the tests see it: its hosts and their engines, a repository deployed
onto it through the CLI, and load through the hosts' balancers. Traffic goes only to the
lab hosts' addresses (10.231.0.0/24, on this machine's bridge) and to loopback."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from gitops_nodes.runtime.docker import free_loopback_port
from gitops_nodes.statedir import StateDir
from tests import waiting

ROOT = Path(__file__).parents[3]
LAB_SCRIPT = ROOT / "scripts" / "swarm-lab"
RUN = Path("/run/gitops-nodes-lab")
REGISTRY = "10.231.0.2:5000"
HOSTS = (  # scripts/swarm-lab's members: name, hostname, address
    ("manager", "lab-manager", "10.231.0.11"),
    ("worker-1", "lab-worker-1", "10.231.0.12"),
    ("worker-2", "lab-worker-2", "10.231.0.13"),
)


def swarm_lab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAB_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def lab_traces() -> list[str]:
    """What of the lab is on this machine: namespaces, links, the iptables rule, mounts,
    cgroups, folders, processes. Empty once `scripts/swarm-lab down` did its job."""
    found: list[str] = []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    found += [f"netns {n.split()[0]}" for n in namespaces.stdout.splitlines() if "gnlab" in n]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True)
    names = [line.split(":")[1].strip() for line in links.stdout.splitlines()]
    found += [f"link {name}" for name in names if "gnlab" in name]
    rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True)
    found += [f"iptables {r}" for r in rules.stdout.splitlines() if "gnlab" in r]
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    found += [f"mount {m.split()[1]}" for m in mounts if "gitops-nodes-lab" in m.split()[1]]
    found += [f"folder {p}" for p in (RUN, Path("/var/lib/gitops-nodes-lab")) if p.exists()]
    cgroups = Path("/sys/fs/cgroup")
    found += [f"cgroup {p}" for p in cgroups.glob("*/gitops-nodes-lab-*")]
    found += [f"cgroup {p}" for p in cgroups.glob("gitops-nodes-lab-*")]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # it ended meanwhile
        if str(RUN) in command and "pytest" not in command:
            found.append(f"process {proc.name}: {command[:120]}")
    return found


@dataclass(frozen=True)
class LabHost:
    name: str  # the script's name: manager, worker-1, worker-2
    hostname: str  # the engine's, and the swarm node's
    address: str

    @property
    def url(self) -> str:
        return f"unix://{RUN}/{self.name}.sock"


@dataclass
class Lab:
    hosts: tuple[LabHost, ...]
    clients: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_script(cls) -> Lab:
        return cls(tuple(LabHost(*h) for h in HOSTS))

    @property
    def manager(self) -> LabHost:
        return self.hosts[0]

    @property
    def workers(self) -> tuple[LabHost, ...]:
        return self.hosts[1:]

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if name in (h.name, h.hostname))

    def client(self, host: LabHost) -> Any:
        if host.name not in self.clients:
            self.clients[host.name] = docker.DockerClient(base_url=host.url, timeout=120)
        return self.clients[host.name]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()

    def node_hostnames(self) -> dict[str, str]:
        """The swarm's node ids and their hostnames, as the manager knows them."""
        nodes = self.client(self.manager).api.nodes()
        return {n["ID"]: n["Description"]["Hostname"] for n in nodes}

    def ready(self) -> set[str]:
        nodes = self.client(self.manager).api.nodes()
        return {
            n["Description"]["Hostname"]
            for n in nodes
            if n["Status"]["State"] == "ready" and n["Spec"].get("Availability") == "active"
        }

    def wait_ready(self, within: float = 90.0) -> None:
        every = {h.hostname for h in self.hosts}
        waiting.wait_until(lambda: self.ready() >= every, "every lab host ready", within, 0.2)

    def running_tasks(self, service: str) -> list[dict[str, Any]]:
        api = self.client(self.manager).api
        tasks = api.tasks(filters={"service": service, "desired-state": "running"})
        return [t for t in tasks if t["Status"]["State"] == "running"]

    def task_hosts(self, service: str) -> Counter[str]:
        """On which hosts the service's running tasks are, counted."""
        names = self.node_hostnames()
        return Counter(names.get(t["NodeID"], "?") for t in self.running_tasks(service))

    def container_host(self, container_id_prefix: str) -> str | None:
        """Which host runs the container whose id starts so (a task's container hostname)."""
        for host in self.hosts:
            for container in self.client(host).api.containers():
                if container["Id"].startswith(container_id_prefix):
                    return host.hostname
        return None


def wait_until(condition: Callable[[], Any], what: str, within: float = 60.0) -> Any:
    """tests.waiting.wait_until at a swarm's pace: tasks take seconds, not milliseconds."""
    return waiting.wait_until(condition, what, within, every=0.2)


def call(
    address: str, port: int, method: str, path: str, body: Any = None, timeout: float = 10.0
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw.startswith(b"{") else raw
    finally:
        conn.close()


@dataclass
class LabRepo:
    """A repo deployed onto the lab: its folder, project, state and balancer ports."""

    lab: Lab
    root: Path
    project: str
    state_parent: Path
    settings: str  # the swarm: block's extra keys (registry, engines), YAML flow style
    port: int = 0
    admin_port: int = 0

    def __post_init__(self) -> None:
        # Any ports do: each host is a network namespace of its own. Distinct per project,
        # so a project being removed never holds the next one's.
        self.port = 20000 + int(self.project[-4:], 16) % 20000
        self.admin_port = self.port + 1
        extra = f", {self.settings}" if self.settings else ""
        (self.root / "gitops-nodes.yaml").write_text(
            f"runtime: swarm\nswarm: {{port: {self.port}, adminPort: {self.admin_port}{extra}}}\n"
        )

    @property
    def state(self) -> StateDir:
        return StateDir.for_project(self.project, self.state_parent)

    def write(self, spec: str) -> None:
        (self.root / "spec.yaml").write_text(spec.lstrip("\n"))

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKER_HOST": self.lab.manager.url,
            "GITOPS_NODES_STATE_DIR": str(self.state_parent),
            "PYTHONPATH": str(ROOT),  # this checkout's code, whatever is installed
        }

    def cli(
        self, *args: str, timeout: float = 600, on_the_lab: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The CLI against the lab's manager, or (on_the_lab=False) this machine's engine."""
        command = [sys.executable, "-m", "gitops_nodes", *args, "--project", self.project]
        env = self.env()
        if not on_the_lab:
            env.pop("DOCKER_HOST")
            if "DOCKER_HOST" in os.environ:
                env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
        return subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )

    def watch(self, log: Path) -> subprocess.Popen[bytes]:
        """`gitops-nodes watch` on the repo's work tree, every 2 s; its output into log."""
        command = [sys.executable, "-m", "gitops_nodes", "watch", str(self.root)]
        command += ["--project", self.project, "--interval", "2s"]
        command += ["--admin-port", str(free_loopback_port())]
        with log.open("w") as output:
            return subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=self.env()
            )

    def apply(self) -> subprocess.CompletedProcess[str]:
        result = self.cli("apply", str(self.root))
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def plan_is_empty(self) -> bool:
        planned = self.cli("plan", str(self.root), "--detailed-exitcode")
        assert planned.returncode in (0, 2), planned.stdout + planned.stderr
        return planned.returncode == 0

    def status(self) -> dict[str, Any]:
        result = self.cli("status", str(self.root), "--json")
        assert result.returncode == 0, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def service(self, node: str) -> str:
        return f"{self.project}-{node}"


@dataclass
class Load:
    """Clients calling one alias through the balancers of some hosts until stopped; every
    answer and failure kept with the time it came (time.monotonic())."""

    targets: tuple[tuple[str, int], ...]  # (address, port) of each balancer called
    path: str
    body: Any = None
    clients_per_target: int = 2
    served: Counter[str] = field(default_factory=Counter)  # by the answer's "version"
    failures: list[tuple[float, str, str]] = field(default_factory=list)  # when, where, what
    last_ok: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, within: float = 600.0) -> Load:
        deadline = time.monotonic() + within
        for address, port in self.targets:
            for _ in range(self.clients_per_target):
                thread = threading.Thread(
                    target=self._run, args=(address, port, deadline), daemon=True
                )
                thread.start()
                self.threads.append(thread)
        return self

    def finish(self) -> Load:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        return self

    def _run(self, address: str, port: int, deadline: float) -> None:
        method = "GET" if self.body is None else "POST"
        data = None if self.body is None else json.dumps(self.body).encode()
        conn = http.client.HTTPConnection(address, port, timeout=10)
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    conn.request(method, self.path, body=data)
                    response = conn.getresponse()
                    raw = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    with self.lock:
                        self.failures.append((time.monotonic(), address, f"{exc!r}"))
                    conn.close()
                    continue
                with self.lock:
                    if response.status == 200:
                        answer = json.loads(raw)
                        self.served[str(answer.get("version", answer.get("model", "?")))] += 1
                        self.last_ok[address] = time.monotonic()
                    else:
                        self.failures.append(
                            (time.monotonic(), address, f"{response.status} {raw[:200]!r}")
                        )
                time.sleep(0.005)  # pacing the load, not synchronising
        finally:
            conn.close()

    def total(self) -> int:
        with self.lock:
            return sum(self.served.values())
