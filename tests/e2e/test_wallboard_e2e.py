"""The floor page as a person sees it: headless Chromium (Debian's, driven by Selenium) against a real worker.

Hand-made calls to ``sales``, stamped just before now (the worker's clock is the wall clock), seconds after
the test's start t: c1 waits 10 s (t-50 to t-40) and is answered; c2 waits 40 s (t-45 to t-5) and hangs up;
c3 has waited since t-30. So today and over 15 minutes: 2 offered, 1 answered within the 20 s threshold, 1
abandoned after S = 10 s: service level 1 / 2 = 50.0 % (below the 80 % goal: the tile says so in words),
abandonment 1 / 2 = 50.0 %, ASA 10 s; 1 caller waiting, for 30 s and counting. ann, who answered c1, is no
member of sales (no event and no queues file says so): no agent counts there. Screenshots go to
``tests/artifacts/``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.e2e.conftest import REPO, run_cli

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "tests" / "artifacts"


def browser() -> webdriver.Chrome:
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1920,1080"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def field(driver: webdriver.Chrome, queue: str, name: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f'[data-queue="{queue}"] [data-field="{name}"]').text


def wait_until(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:  # not rendered yet
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("the page never showed it")
        time.sleep(0.2)


def test_the_floor_page_shows_the_hand_counted_queue_ticks_and_says_when_it_is_stale(
    broker, worker_factory, tmp_path: Path
):
    t = int(time.time())
    if t % 86400 < 120:  # the calls would straddle midnight (UTC), and "today" with them
        time.sleep(120 - t % 86400)
        t = int(time.time())
    calls = {
        "c1": [("queue", -50), ("answer", -40), ("hangup", -20)],
        "c2": [("queue", -45), ("abandon", -5), ("hangup", -5)],
        "c3": [("queue", -30)],
    }
    lines = []
    for call, steps in calls.items():
        for etype, sec in steps:
            event = {"event_id": f"{call}-{etype}", "type": etype, "ts": t + sec, "call_id": call}
            event.update(
                {"queue": "sales"} if etype == "queue" else {"agent": "ann"} if etype == "answer" else {}
            )
            lines.append(json.dumps(event))
    events = tmp_path / "calls.jsonl"
    events.write_text("\n".join(lines) + "\n")
    w = worker_factory().start()
    assert run_cli(broker, "produce", str(events)).returncode == 0
    ARTIFACTS.mkdir(exist_ok=True)
    driver = browser()
    try:
        driver.get(w.base + "/")
        wait_until(lambda: field(driver, "sales", "service_level") == "50.0 %")
        assert field(driver, "sales", "calls_waiting") == "1"
        assert field(driver, "sales", "sl_state") == "▼ below goal"
        assert "alert" in driver.find_element(By.CSS_SELECTOR, '[data-queue="sales"]').get_attribute("class")
        assert field(driver, "sales", "abandonment_today") == "50.0 %"
        assert field(driver, "sales", "abandonment_15m") == "50.0 %"
        assert field(driver, "sales", "asa") == "10 s"
        assert field(driver, "sales", "agents") == "0 available · 0 on a call · 0 after-call · 0 paused"
        # the oldest wait is c3's, 30 s at t and counting, between two answers of the worker too
        first = int(re.match(r"(\d+) s", field(driver, "sales", "oldest_wait")).group(1))
        assert first >= 30
        time.sleep(2.5)
        later = int(re.match(r"(\d+) s", field(driver, "sales", "oldest_wait")).group(1))
        assert later >= first + 2
        assert driver.find_element(By.ID, "status").text == "live"
        driver.save_screenshot(str(ARTIFACTS / "floor.png"))
        # the worker stops: the page says since when its figures are stale, then recovers by itself
        w.stop()
        status = wait_until(
            lambda: (
                driver.find_element(By.ID, "status").text.startswith("stale since")
                and driver.find_element(By.ID, "status").text
            ),
            15,
        )
        assert re.fullmatch(r"stale since \d\d:\d\d:\d\d", status)
        driver.save_screenshot(str(ARTIFACTS / "floor-stale.png"))
        w.start()
        wait_until(lambda: driver.find_element(By.ID, "status").text == "live", 60)
        # (the restarted worker answers before it has recovered its queues: they come back within a minute)
        wait_until(lambda: field(driver, "sales", "service_level") == "50.0 %", 60)
    finally:
        driver.quit()
