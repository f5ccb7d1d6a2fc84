"""The status page in a real browser: Debian's Chromium, driven by Selenium.

``kiisrv serve`` runs as in production; the browser loads the page, a build started
by the test shows up on it while it runs (with its log) and in the recent builds once
done, the charts are drawn, and the page logs no errors. Without Chromium the test is
skipped, unless KIISRV_REQUIRE_BROWSER=1 (CI installs it).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiisrv.settings import Settings
from tests.helpers import REPO, ktype, request, serve

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("KIISRV_REQUIRE_BROWSER") == "1":
            pytest.fail("KIISRV_REQUIRE_BROWSER=1 but chromium/chromedriver are not installed")
        pytest.skip("no chromium and chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1400",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, check: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        driver.refresh()
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"page never showed it:\n{driver.page_source[:3000]}")


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_status_page_shows_builds_live_and_draws_its_charts(
    docker_settings: Settings, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    with serve(docker_settings, tmp_path / "server.log") as live:
        browser.get(f"{live.base}/status")
        assert browser.title == "kiisrv status"
        assert "Nothing is building." in browser.page_source
        assert console_errors(browser) == []

        answers: list[httpx.Response] = []
        slow = request(ktype(custom="# KIISRV_TEST_SLEEP=4", layout="Browser"))
        build = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{live.base}/", json=slow, timeout=120))
        )
        build.start()
        wait_for(
            browser,
            lambda: "KType Browser" in browser.find_element(By.ID, "active").text,
        )
        active = browser.find_element(By.ID, "active").text
        assert "latest" in active and "Build=warm" in active  # its live log
        build.join(60)
        assert answers and answers[0].status_code == 200, answers

        wait_for(browser, lambda: "Nothing is building." in browser.page_source)
        recent = browser.find_element(By.ID, "recent").text
        assert "KType Browser latest succeeded" in recent
        drawn = browser.execute_script(
            "return ['perDay', 'keyboards', 'buildTime']"
            ".map(id => Chart.getChart(id) !== undefined)"
        )
        assert drawn == [True, True, True]
        per_day = browser.execute_script("return Chart.getChart('perDay').data.datasets[0].data")
        assert sum(per_day) >= 1
        assert console_errors(browser) == []
        assert browser.current_url.endswith("/status")
        if os.environ.get("KIISRV_STATUS_SCREENSHOT"):
            browser.save_screenshot(str(REPO / "docs" / "status.png"))


def test_get_root_is_the_status_page_for_a_browser(
    docker_settings: Settings, tmp_path: Path
) -> None:
    with serve(docker_settings, tmp_path / "server.log") as live:
        page = httpx.get(f"{live.base}/", timeout=10)
        assert page.status_code == 200 and "<title>kiisrv status</title>" in page.text
        chart = httpx.get(f"{live.base}/static/chart.umd.min.js", timeout=10)
        assert chart.status_code == 200 and "Chart" in chart.text[:2000]
        assert httpx.get(f"{live.base}/static/..%2fapp.py", timeout=10).status_code == 404
        figures = httpx.get(f"{live.base}/status.json", timeout=10).json()
        assert figures["active"] == [] and "recent" in figures
