"""What the benchmark scripts share: commands, wrk's report, CPU load, signals, cleanup.

The scripts run as `python3 benchmarks/<name>.py`, so this folder is on their import path.
"""

from __future__ import annotations

import compileall
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "gitops-nodes/python-base:bookworm"
PROJECT_LABEL = "io.gitops-nodes.project"
BENCH_LABEL = "io.gitops-nodes.bench"  # on containers a benchmark runs itself
COMMAND_TIMEOUT = 180.0


class BenchError(Exception):
    """Something the benchmark needs failed or did not happen in time; the run stops."""


# -- commands -----------------------------------------------------------------------------


def run(argv: Sequence[str], cwd: Path | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a command to completion; its stdout, or BenchError with its output."""
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(argv[:4])} … did not finish in {timeout:g}s") from exc
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def gitops_nodes(*args: str) -> list[str]:
    return [sys.executable, "-m", "gitops_nodes", *args]


def compile_bytecode() -> None:
    """Compile gitops-nodes' modules to bytecode, as pip does when it installs a package.

    Where PYTHONDONTWRITEBYTECODE is set (this machine, some CI images) a checkout run in
    place never keeps what it compiles: every command compiles each module it imports again
    (about 0.1 s of a 0.5 s plan here), which timings of commands would otherwise count."""
    for package in ("gitops_nodes", "balancer"):
        if not compileall.compile_dir(REPO_ROOT / package, quiet=1):
            raise BenchError(f"compiling {package} to bytecode failed")


def userland_proxy_running(port: int | None = None) -> bool:
    """Whether the engine runs docker-proxy processes (its userland proxy is on), or one
    for this published port: a process more per port, which copies the port's traffic and
    slows creating and removing containers."""
    if port is None:
        found = subprocess.run(["pgrep", "-x", "docker-proxy"], capture_output=True)
    else:
        pattern = f"docker-proxy .*-host-port {port}( |$)"
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True)
    return found.returncode == 0


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def run_reporting(body: Callable[[], None], interrupted: str) -> int:
    """A benchmark's exit code: 0 when body ran, 1 (with its message) on a BenchError, 130
    on Ctrl-C or SIGTERM, after `interrupted` says what was cleaned up."""
    try:
        body()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; {interrupted}", file=sys.stderr)
        return 130
    return 0


def require(*tools: str) -> None:
    """BenchError naming every tool missing from PATH."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise BenchError(
            f"missing tools: {', '.join(missing)} (on Debian and Ubuntu: "
            f"apt-get install -y {' '.join(missing)})"
        )


def require_base_image() -> None:
    try:
        run(["docker", "image", "inspect", BASE_IMAGE], timeout=30)
    except BenchError as exc:
        raise BenchError(
            f"{BASE_IMAGE} is missing or the Docker engine is down; "
            f"run scripts/lib/ensure-base-image.sh first ({exc})"
        ) from exc


def cleanup_project(repo: Path, project: str, state_dir: Path) -> None:
    """`gitops-nodes destroy`, then remove whatever still carries the project's labels."""
    try:
        destroy = ("destroy", str(repo), "--project", project, "--state-dir", str(state_dir))
        run(gitops_nodes(*destroy), cwd=REPO_ROOT)
    except BenchError as exc:
        warn(f"destroy failed: {exc}")
    for label in (f"{PROJECT_LABEL}={project}", f"{BENCH_LABEL}={project}"):
        try:
            left = run(["docker", "ps", "-aq", "--filter", f"label={label}"]).split()
            if left:
                warn(f"removing {len(left)} container(s) left with label {label}")
                run(["docker", "rm", "-f", *left])
        except BenchError as exc:
            warn(f"removing containers labelled {label} failed: {exc}")


# -- wrk ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """The figures of one wrk run: throughput, latency percentiles and failures."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    socket_errors: int
    non_2xx: int

    @property
    def failures(self) -> int:
        return self.socket_errors + self.non_2xx


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)\s*(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(output: str) -> WrkResult:
    """wrk's --latency report as numbers, latencies in milliseconds whatever unit it used."""
    rps = _RPS.search(output)
    total = _TOTAL.search(output)
    percentiles = {p: float(v) * _UNITS_MS[unit] for p, v, unit in _LATENCY.findall(output)}
    if rps is None or total is None or set(percentiles) != {"50", "99"}:
        raise BenchError(f"cannot read wrk's output:\n{output}")
    socket_errors = _SOCKET.search(output)
    non_2xx = _NON_2XX.search(output)
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        requests=int(total.group(1)),
        socket_errors=sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


# -- the machine --------------------------------------------------------------------------


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of CPU time not idle over `seconds`, from /proc/stat (0 when unreadable):
    other load skews every figure."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)  # + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def _raise_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the cleanup runs."""
    previous = {s: signal.signal(s, _raise_on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
