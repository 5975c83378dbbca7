"""The soak benchmark's short run: `watch` under steady load through both aliases and a commit
every 10 s for two minutes, on the real engine, within budgets for so short a window.

The long run (30 minutes, README "Running for months") is run by hand; this one catches what
grows fast: a leak per request or per commit, descriptors that pile up, a log past its budget,
or a single failed request.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_fails_no_request_and_grows_within_budget() -> None:
    argv = [
        sys.executable,
        str(ROOT / "benchmarks" / "soak.py"),
        "--minutes",
        "2",
        "--warmup",
        "0.75",
        "--rate",
        "40",
        "--commit-every",
        "10",
        "--check",
        # Over 75 s, RSS moves by a few hundred kB as caches fill (the balancer's memos hold
        # up to about a thousand entries each); a leak of 200 bytes a request would show as
        # 30 MB/hour at this rate.
        "--max-rss-mb-per-hour",
        "30",
        "--max-fd-range",
        "16",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    report = done.stdout + "\n" + done.stderr[-3000:]
    assert done.returncode == 0, report
    assert "failed: 0" in done.stdout, report
    assert "OVER BUDGET" not in done.stdout, report
