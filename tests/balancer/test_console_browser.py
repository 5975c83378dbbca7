"""The web console in headless Chromium against a real balancer serving 1,000 nodes and
1,000 aliases: both lists are paged, nodes are filtered, a node's page opens by keyboard, and
axe-core finds no serious or critical violation; when the balancer stops, the page says it
lost its connection. (The console on a real `watch` is
tests/integration/test_console.py.)"""

from __future__ import annotations

from collections.abc import Callable

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from balancer.table import Endpoint, NodeEntry
from tests.balancer.conftest import BalancerHarness, alias, free_port, health
from tests.browser import axe_violations, browser, poll, shot

__all__ = ["browser"]  # the fixture, used by name

NODES = 1000


def test_a_thousand_nodes_are_paged_filtered_and_reachable_by_keyboard(
    make_balancer: Callable[..., BalancerHarness], browser: Callable[..., WebDriver]
) -> None:
    harness = make_balancer()
    closed = free_port()  # nothing listens there: every instance stays unchecked or Unhealthy
    nodes = {
        f"node-{i:04d}": NodeEntry(
            endpoints=(Endpoint(f"node-{i:04d}-0", "127.0.0.1", closed),),
            min_healthy=1,
            health=health(interval=30.0),
        )
        for i in range(NODES)
    }
    aliases = {f"alias-{i:04d}": alias((f"node-{i:04d}", 1)) for i in range(1, NODES)}
    aliases["front"] = alias(("node-0000", 1), ("node-0001", 3))
    harness.publish(nodes, aliases, within=30.0)
    driver = browser()
    driver.get(f"http://127.0.0.1:{harness.admin_port}/")
    poll(
        lambda: driver.find_element(By.ID, "node-count").text == f"{NODES} of {NODES} nodes",
        "the node count",
    )
    assert driver.find_element(By.ID, "page").text == "Page 1 of 20"
    # 1,000 aliases too, twenty to a page
    assert driver.find_element(By.ID, "alias-page").text == "Aliases page 1 of 50"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#alias-list .alias")) == 20
    driver.find_element(By.ID, "alias-next").click()
    poll(
        lambda: (
            driver.find_element(By.CSS_SELECTOR, "#alias-list .alias").get_attribute("data-alias")
            == "alias-0021"
        ),
        "the second page of aliases",
    )
    rows = driver.find_elements(By.CSS_SELECTOR, "[data-node-row]")
    assert [r.get_attribute("data-node-row") for r in rows] == [f"node-{i:04d}" for i in range(50)]
    driver.find_element(By.ID, "next").click()
    poll(lambda: driver.find_element(By.ID, "page").text == "Page 2 of 20", "page 2")
    first = driver.find_element(By.CSS_SELECTOR, "[data-node-row]")
    assert first.get_attribute("data-node-row") == "node-0050"
    driver.find_element(By.ID, "filter").send_keys("node-0999")
    poll(lambda: driver.find_element(By.ID, "node-count").text == "1 of 1000 nodes", "filter")
    # Without a watch loop there is nothing to reconcile: no such button.
    assert not driver.find_element(By.ID, "reconcile").is_displayed()
    shot(driver, "thousand-nodes")
    assert axe_violations(driver) == []
    # Keyboard only: tab to the node's link and open its page with Enter.
    link = driver.find_element(By.CSS_SELECTOR, "a[data-key='node:node-0999']")
    for _ in range(80):  # skip link, sections, aliases' links and pager, filter, the node
        if driver.switch_to.active_element == link:
            break
        ActionChains(driver).send_keys(Keys.TAB).perform()
    assert driver.switch_to.active_element == link
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    poll(
        lambda: driver.find_element(By.ID, "node-title").text == "Node node-0999",
        "the node's page",
    )
    assert driver.find_element(By.ID, "node-instances").text.count("node-0999-0") == 1
    assert axe_violations(driver) == []
    # The control plane goes away: the page says so rather than showing stale figures as live.
    assert driver.find_element(By.ID, "connection").text == "Live"
    harness.stop()
    poll(
        lambda: "Connection lost" in driver.find_element(By.ID, "connection").text,
        "the page to say it lost its connection",
    )
    shot(driver, "connection-lost")


def test_a_link_to_a_node_that_cannot_be_decoded_still_opens_the_console(
    make_balancer: Callable[..., BalancerHarness], browser: Callable[..., WebDriver]
) -> None:
    # Before: decodeURIComponent threw on `#node=%` at the end of the page's start, and the
    # live view never began.
    harness = make_balancer()
    closed = free_port()
    endpoints = (Endpoint("web-0", "127.0.0.1", closed),)
    entry = NodeEntry(endpoints=endpoints, min_healthy=1, health=health(interval=30.0))
    harness.publish({"web": entry}, {"front": alias(("web", 1))})
    driver = browser()
    driver.get(f"http://127.0.0.1:{harness.admin_port}/-/ui/#node=%")
    poll(lambda: driver.find_element(By.ID, "node-count").text == "1 of 1 nodes", "the list")
