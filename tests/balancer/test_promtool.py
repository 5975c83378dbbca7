"""`/-/metrics` after real traffic passes `promtool check metrics` (Debian's `prometheus`
package; scripts/lib/ensure-test-tools.sh installs it), with no lint warning at all."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

from tests import promtext
from tests.balancer.conftest import BackendProcess, BalancerHarness, alias, node


def promtool_check(text: str) -> str:
    """promtool's complaints about an exposition (empty when it is clean); fails on an error."""
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run scripts/lib/ensure-test-tools.sh"
    done = subprocess.run(
        [binary, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    complaints = (done.stdout + done.stderr).decode().strip()
    assert done.returncode in (0, 3), complaints  # 3: lint problems, listed in the output
    return complaints


def test_a_real_scrape_with_traffic_is_clean_for_promtool(
    balancer: BalancerHarness, start_backend: Callable[..., BackendProcess]
) -> None:
    a1, b1 = start_backend("a1"), start_backend("b1")
    balancer.publish({"a": node(a1), "b": node(b1)}, {"w": alias(("a", 1), ("b", 1))})
    balancer.wait_status({"a1": "Healthy", "b1": "Healthy"})
    for _ in range(10):
        assert balancer.get("/aliases/w/x").status == 200
    assert balancer.get("/nodes/a/status?code=503").status == 503
    assert balancer.get("/nodes/b/status?code=201").status == 201
    assert balancer.get("/aliases/nope/x").status == 404
    assert balancer.get("/nodes/nope/x").status == 404

    text = balancer.admin("GET", "/-/metrics").body.decode()

    assert promtool_check(text) == ""
    families = promtext.read(text)
    assert families["node_requests_total"].type == "counter"
    assert families["alias_http_codes_total"].type == "counter"
    assert families["node_errors_total"].value("node_errors_total", node_id="a") == 1
    assert families["alias_requests_total"].value("alias_requests_total", alias_name="w") == 10


def test_promtool_flags_counters_without_the_suffix() -> None:
    # The check above can fail: promtool does object to the names the balancer used before.
    text = "# HELP node_requests Requests.\n# TYPE node_requests counter\nnode_requests 1\n"
    assert 'node_requests counter metrics should have "_total" suffix' in promtool_check(text)
