"""Headless Chromium for the web console's tests: Debian's chromium and chromedriver driven by
selenium, screenshots saved under artifacts/console/ (gitignored), and axe-core's serious and
critical violations (axe-core from the npm registry, installed by
scripts/lib/ensure-test-tools.sh into .test-tools/)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).parents[1]
ARTIFACTS = ROOT / "artifacts" / "console"
AXE = ROOT / ".test-tools" / "node_modules" / "axe-core" / "axe.min.js"
PAGE_WITHIN = 60.0  # generous: other engineers' tests share the two cores


def poll(condition: Callable[[], Any], what: str, within: float = PAGE_WITHIN) -> Any:
    """condition's first truthy value, polled every 0.1 s; a page that is still changing
    (a stale element, a missing one) counts as not yet."""
    deadline = time.monotonic() + within
    while True:
        try:
            value = condition()
        except (WebDriverException, OSError, ValueError, KeyError, IndexError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def browser() -> Iterator[Callable[..., WebDriver]]:
    """Start headless Chromium drivers (each without cookies); all quit afterwards."""
    drivers: list[WebDriver] = []

    def start(width: int = 1280, height: int = 1000) -> WebDriver:
        chromium = shutil.which("chromium")
        chromedriver = shutil.which("chromedriver")
        assert chromium and chromedriver, "run scripts/lib/ensure-test-tools.sh"
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in (
            "--headless=new",
            "--no-sandbox",  # the tests run as root
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            f"--window-size={width},{height}",
        ):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=Service(chromedriver))
        driver.set_page_load_timeout(PAGE_WITHIN)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def shot(driver: WebDriver, name: str) -> Path:
    """Save a screenshot of the page as artifacts/console/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    return path


def axe_violations(driver: WebDriver) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    assert AXE.is_file(), f"{AXE} is missing: run scripts/lib/ensure-test-tools.sh"
    driver.set_script_timeout(PAGE_WITHIN)
    driver.execute_script(AXE.read_text())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then((r) => done(r.violations)).catch((e) => done([{id: 'axe', impact: 'critical',"
        " help: String(e), nodes: []}]));"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": len(v["nodes"])}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]
