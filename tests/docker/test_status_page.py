"""The status page in a real browser: Debian's Chromium, driven by Selenium.

``kiisrv serve`` runs as in production; the browser loads the page, a build started
by the test shows up on it while it runs (as a count on the public page; with its log on
the operator's detailed page) and in the recent builds once done, the charts are drawn,
and the page logs no errors. Without Chromium the test is
skipped, unless KIISRV_REQUIRE_BROWSER=1 (CI installs it).
"""

from __future__ import annotations

import os
import secrets
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
    """The public page says a KType is building, never which build; the operator's
    detailed page (the token in a header, as a proxy or a script would send it) shows
    its layout and live log. Both draw their charts."""
    from selenium.webdriver.common.by import By

    token = secrets.token_hex(24)
    with serve(docker_settings, tmp_path / "server.log", KIISRV_STATUS_TOKEN=token) as live:
        browser.get(f"{live.base}/status")
        assert browser.title == "kiisrv status"
        assert "Nothing is building." in browser.page_source
        assert console_errors(browser) == []

        answers: list[httpx.Response] = []
        slow = request(ktype(custom="# KIISRV_TEST_SLEEP=6", layout="Browser"))
        build = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{live.base}/", json=slow, timeout=120))
        )
        build.start()
        wait_for(
            browser,
            lambda: (
                "1 building: 1 \N{MULTIPLICATION SIGN} KType."
                in browser.find_element(By.ID, "active").text
            ),
        )
        assert "Browser" not in browser.page_source  # no layout name, no log, no link
        assert "@@@@@" not in browser.page_source and "builds/" not in browser.page_source

        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {token}"}}
        )
        browser.get(f"{live.base}/status/detail")
        assert browser.title == "kiisrv status (detail)"
        wait_for(
            browser,
            lambda: "@@@@@ Build=" in browser.find_element(By.ID, "active").text,  # its live log
        )
        assert "KType Browser · latest · running" in browser.find_element(By.ID, "active").text
        build.join(60)
        assert answers and answers[0].status_code == 200, answers

        wait_for(browser, lambda: "Nothing is building." in browser.page_source)
        assert "KType Browser latest succeeded" in browser.find_element(By.ID, "recent").text
        assert charts_drawn(browser)
        assert console_errors(browser) == []

        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
        browser.get(f"{live.base}/status")
        recent = browser.find_element(By.ID, "recent").text
        assert "KType latest succeeded" in recent and "Browser" not in browser.page_source
        assert charts_drawn(browser)
        per_day = browser.execute_script("return Chart.getChart('perDay').data.datasets[0].data")
        assert sum(per_day) >= 1
        assert console_errors(browser) == []
        assert browser.current_url.endswith("/status")
        if os.environ.get("KIISRV_STATUS_SCREENSHOT"):
            browser.save_screenshot(str(REPO / "docs" / "status.png"))


def charts_drawn(driver: Any) -> bool:
    drawn = driver.execute_script(
        "return ['perDay', 'keyboards', 'buildTime'].map(id => Chart.getChart(id) !== undefined)"
    )
    return bool(drawn == [True, True, True])


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
