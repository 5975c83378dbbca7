"""The web console in a real browser: headless Chromium (Debian's, driven by selenium)
against one real `gitops-nodes watch` that applies the example repository on the real engine.

One watch serves the whole module (its start builds the example's images); the admin key is
set, so every browser logs in first. Each test saves screenshots under artifacts/console/
(gitignored). axe-core (installed by scripts/lib/ensure-test-tools.sh) is run inside the page.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from gitops_nodes.spec.load import load_spec
from tests.browser import axe_violations, browser, poll, shot
from tests.conftest import remove_project
from tests.integration.helpers import Watch, git
from tests.status_schema import validate_status

EXAMPLE = Path(__file__).parents[2] / "example-repo"
ADMIN = "console-admin-key-" + secrets.token_hex(8)
# What the page must show: the example as validate reads it (no secrets or keys to read).
_EXAMPLE_SPEC = load_spec(EXAMPLE, read_keys=False)
EXAMPLE_NODES = {name: node.instances for name, node in _EXAMPLE_SPEC.nodes.items()}
EXAMPLE_ALIASES = set(_EXAMPLE_SPEC.aliases)
__all__ = ["browser"]  # the fixture, used by name
START_WITHIN = 600.0  # the example's images are built on the first start (busy machine)


def admin_request(watch: Watch, method: str, path: str) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", watch.admin, timeout=30)
    try:
        connection.request(method, path, headers={"authorization": f"Bearer {ADMIN}"})
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else None
    finally:
        connection.close()


def predict(watch: Watch, count: int) -> None:
    """count calls of the example's sentiment alias through the balancer (loopback)."""
    connection = http.client.HTTPConnection("127.0.0.1", watch.port, timeout=30)
    try:
        for _ in range(count):
            body = json.dumps({"text": "a good day"})
            connection.request("POST", "/aliases/sentiment/predict", body=body)
            response = connection.getresponse()
            response.read()
            assert response.status == 200
    finally:
        connection.close()


def status(watch: Watch) -> dict[str, Any]:
    code, document = admin_request(watch, "GET", "/-/status")
    assert code == 200, document
    result: dict[str, Any] = document
    return result


@pytest.fixture(scope="module")
def console(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    """`gitops-nodes watch` with the admin key set, following a repository holding the example,
    started once for the module and waited on until every node of the example is Healthy."""
    folder = tmp_path_factory.mktemp("console")
    repo = folder / "origin"
    shutil.copytree(EXAMPLE, repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the example repository")
    project = f"gnt-{secrets.token_hex(4)}"
    watch = Watch(repo, project, folder / "state", env={"GITOPS_NODES_ADMIN_TOKEN": ADMIN})
    try:

        def example_healthy() -> bool:
            try:
                document = status(watch)
            except (OSError, AssertionError, ValueError):
                return False
            nodes = {n["name"]: n for n in document["nodes"]}
            return set(nodes) == set(EXAMPLE_NODES) and all(
                n["status"] == "Healthy" and len(n["instances"]) == EXAMPLE_NODES[n["name"]]
                for n in nodes.values()
            )

        watch.wait(example_healthy, "the example to be Healthy", START_WITHIN)
        yield watch
    finally:
        if watch.process.poll() is None:
            watch.stop()
        remove_project(docker_client, project)


def log_in(driver: WebDriver, watch: Watch, key: str = ADMIN) -> None:
    driver.get(f"http://127.0.0.1:{watch.admin}/-/ui/")
    poll(lambda: driver.find_element(By.ID, "key"), "the login form")
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()


def node_rows(driver: WebDriver) -> dict[str, list[str]]:
    """Each node row's cell texts by node name, read in one script: the page redraws the table
    whenever a figure changes (every half second under traffic), so reading it cell by cell
    over WebDriver can straddle a redraw and find every element stale, look after look."""
    rows: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll('tr.node-row')]"
        ".map((row) => [...row.querySelectorAll('td')].map((cell) => cell.innerText.trim()));"
    )
    return {cells[0]: cells for cells in rows if cells}


def live(driver: WebDriver) -> None:
    """Wait until the page follows the stream and has drawn the aliases."""
    poll(
        lambda: (
            driver.find_element(By.ID, "connection").text == "Live"
            and driver.find_elements(By.CSS_SELECTOR, "#alias-list .alias")
        ),
        "the page to be live",
    )


def test_with_the_admin_key_set_the_page_refuses_without_login(
    console: Watch, browser: Callable[..., WebDriver]
) -> None:
    driver = browser()
    driver.get(f"http://127.0.0.1:{console.admin}/-/ui/")
    poll(lambda: driver.current_url.endswith("/-/ui/login"), "the redirect to the login form")
    assert "gitops-nodes" not in driver.find_element(By.TAG_NAME, "main").text.replace(
        "gitops-nodes console", ""
    )
    assert not driver.find_elements(By.ID, "alias-list")
    driver.get(f"http://127.0.0.1:{console.admin}/-/status")
    assert "the admin port needs its key" in driver.page_source
    log_in(driver, console, key="not-the-admin-key-at-all")
    alert = poll(lambda: driver.find_element(By.CSS_SELECTOR, "[role=alert]"), "the refusal")
    assert "not the admin key" in alert.text
    shot(driver, "login-refused")
    assert axe_violations(driver) == []
    log_in(driver, console)
    live(driver)
    cookies = {c["name"]: c for c in driver.get_cookies()}
    (session,) = cookies.values()
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert ADMIN not in session["value"]
    assert ADMIN not in driver.page_source


def test_the_page_shows_every_alias_node_and_instance_of_the_example(
    console: Watch, browser: Callable[..., WebDriver]
) -> None:
    driver = browser()
    log_in(driver, console)
    live(driver)
    document = status(console)
    shown_aliases = {
        e.get_attribute("data-alias")
        for e in driver.find_elements(By.CSS_SELECTOR, "#alias-list .alias")
    }
    assert shown_aliases == EXAMPLE_ALIASES
    rows = poll(
        lambda: (
            {
                e.get_attribute("data-node-row")
                for e in driver.find_elements(By.CSS_SELECTOR, "[data-node-row]")
            }
            == set(EXAMPLE_NODES)
        ),
        "every node in the list",
    )
    assert rows
    text = driver.find_element(By.ID, "node-list").text
    for entry in document["nodes"]:
        for instance in entry["instances"]:
            assert f"{entry['name']}/{instance['instance']}" in text
            assert instance["address"] in text
    assert text.count("Healthy") >= sum(EXAMPLE_NODES.values()) + len(EXAMPLE_NODES)
    watch_text = driver.find_element(By.ID, "watch-info").text
    applied = document["watch"]["applied"]
    assert applied["id"][:12] in watch_text and "the example repository" in watch_text
    assert applied["author"] and applied["author"] in watch_text
    # Traffic through the balancer shows as requests/s and latency on the node's row.
    predict(console, 60)

    def busy_row() -> str | None:
        # Traffic on every look: the row's figures cover the last seconds only, and a page
        # slow to draw on a busy machine would otherwise see the burst above age out.
        predict(console, 3)
        cells = node_rows(driver).get("sentiment-v1")
        return "ok" if cells and cells[3] != "0" and cells[5] != "–" else None

    poll(busy_row, "sentiment-v1's requests/s and p50 on the page")
    # A redraw changes the row's figures in place: the link a pointer may be pressing stays
    # the same element (a replaced one would turn that click into nothing).
    link = driver.find_element(By.CSS_SELECTOR, "[data-node-row='sentiment-v1'] a")
    figures = node_rows(driver)["sentiment-v1"][3:7]

    def redrawn() -> bool:
        predict(console, 3)
        return node_rows(driver)["sentiment-v1"][3:7] != figures

    poll(redrawn, "sentiment-v1's figures to change")
    assert link.text == "sentiment-v1"  # not stale: the same element
    shot(driver, "overview")
    assert axe_violations(driver) == []
    # A node's page: its spec as applied (environment names, never values) and its logs.
    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=30)
    connection.request("POST", "/nodes/sentiment-v2/predict", body="{}")  # 422: logged
    assert connection.getresponse().status == 422
    connection.close()
    driver.find_element(By.CSS_SELECTOR, "a[data-key='node:sentiment-v2']").click()
    spec = poll(
        lambda: (
            driver.find_element(By.ID, "node-spec").text
            if "THRESHOLD" in driver.find_element(By.ID, "node-spec").text
            else None
        ),
        "sentiment-v2's spec",
    )
    # names only: the values ("1", "0.5") are not beside them
    assert "Environment (names only)\nMODEL_VERSION, THRESHOLD\n" in spec
    poll(
        lambda: "422" in driver.find_element(By.CSS_SELECTOR, "#node-logs pre").text,
        "its log line of the 422",
    )
    shot(driver, "node")
    assert axe_violations(driver) == []
    # The API the page is built on follows its schema, under watch and with a node's detail.
    validate_status(status(console))
    code, detail = admin_request(console, "GET", "/-/status?node=sentiment-v2")
    assert code == 200 and detail["node"]["logs"] and detail["node"]["logsError"] is None
    assert detail["node"]["spec"]["env"] == ["MODEL_VERSION", "THRESHOLD"]
    validate_status(detail)


def test_a_commit_that_changes_weights_shows_the_new_split_without_a_reload(
    console: Watch, browser: Callable[..., WebDriver]
) -> None:
    driver = browser()
    log_in(driver, console)
    live(driver)
    driver.execute_script("window.sameDocument = true;")

    def sentiment_split() -> str:
        legend = driver.find_element(By.CSS_SELECTOR, "[data-alias='sentiment'] .legend")
        return str(legend.text)

    assert "90% (weight 90)" in sentiment_split()
    alias = console.repo / "aliases" / "sentiment.yaml"
    alias.write_text(
        alias.read_text().replace("weight: 90", "weight: 40").replace("weight: 10", "weight: 60")
    )
    git(console.repo, "commit", "-q", "-am", "sentiment: 40/60")
    console.hook()

    def served_weights() -> bool:
        sentiment = next(a for a in status(console)["aliases"] if a["name"] == "sentiment")
        return [t["weight"] for t in sentiment["nodes"]] == [40, 60]

    poll(served_weights, "the balancer to serve the new weights", 120.0)
    served_at = time.monotonic()
    poll(lambda: "40% (weight 40)" in sentiment_split(), "the new split on the page", 10.0)
    assert time.monotonic() - served_at < 2.0
    assert "60% (weight 60)" in sentiment_split()
    assert driver.execute_script("return window.sameDocument === true;")
    shot(driver, "new-split")


def test_an_unhealthy_node_shows_so(
    console: Watch, browser: Callable[..., WebDriver], docker_client: Any
) -> None:
    driver = browser()
    log_in(driver, console)
    live(driver)
    (container,) = docker_client.containers.list(
        filters={
            "label": [
                f"io.gitops-nodes.project={console.project}",
                "io.gitops-nodes.node=sentiment-v2",
            ]
        }
    )
    # The container's processes stopped from the host (SIGSTOP): the engine still calls it
    # running, so watch sees no drift, while health checks time out and take it out.
    top = container.top()
    column = top["Titles"].index("PID")
    pids = [int(row[column]) for row in top["Processes"]]
    badge = "[data-alias='sentiment'] [data-node='sentiment-v2'] .badge"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        poll(
            lambda: driver.find_element(By.CSS_SELECTOR, badge).text == "Unhealthy",
            "sentiment-v2 shown Unhealthy",
        )
        poll(
            lambda: node_rows(driver)["sentiment-v2"][1] == "Unhealthy",
            "sentiment-v2's row Unhealthy",
        )
        shot(driver, "unhealthy")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    poll(
        lambda: driver.find_element(By.CSS_SELECTOR, badge).text == "Healthy",
        "sentiment-v2 Healthy again",
    )


def test_reconcile_now_triggers_a_reconcile(
    console: Watch, browser: Callable[..., WebDriver]
) -> None:
    driver = browser()
    log_in(driver, console)
    live(driver)
    before = status(console)["watch"]["reconciles"]
    driver.find_element(By.ID, "reconcile").click()
    poll(
        lambda: "Asked for" in driver.find_element(By.ID, "reconcile-result").text,
        "the action to be accepted",
    )

    def reconciled() -> bool:
        history = status(console)["watch"]["history"]
        return any(entry["reason"] == "console" for entry in history)

    poll(reconciled, "a reconcile asked for on the console", 120.0)
    assert status(console)["watch"]["reconciles"] > before
    poll(
        lambda: "console" in driver.find_element(By.ID, "history").text,
        "the reconcile in the page's history",
    )
    # Without the page's CSRF token the same POST is refused, even with the session cookie.
    refused = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/-/actions/reconcile', {method: 'POST'}).then((r) => done(r.status));"
    )
    assert refused == 403


def test_on_a_phone_sized_screen_the_page_is_usable_and_accessible(
    console: Watch, browser: Callable[..., WebDriver]
) -> None:
    driver = browser(390, 844)
    log_in(driver, console)
    live(driver)
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
    )
    assert overflow <= 1, f"the page is {overflow}px wider than a phone's screen"
    shot(driver, "phone")
    assert axe_violations(driver) == []
