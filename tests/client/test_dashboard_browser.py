"""The dashboard in a real browser (headless Chromium) against the live service with an API key: enter the key,
submit a job, watch its charts fill from the SSE stream, download a checkpoint, read the verdict; 422s at the
fields; the docs pages; and nothing requested from any other host.

Screenshots go to tmp_path, and to docs/img/ when RIS_UI_SCREENSHOTS is set (palette PNGs for the README)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from tests.client.browser import chromium, requested_hosts
from tests.client.conftest import API_KEY, REPO, Live
from tests.worker.configs import quick_diagnostic_config

pytestmark = pytest.mark.integration
T = TypeVar("T")
#: Deadline of one wait in the browser, seconds (a tiny job takes seconds; the CPU is shared).
DEADLINE_S = 180.0


def until(what: str, check: Callable[[], T | None], deadline_s: float = DEADLINE_S) -> T:
    end = time.monotonic() + deadline_s
    last_error: Exception | None = None
    while time.monotonic() < end:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the element may not exist yet, or was just redrawn
            last_error = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error!r})")


def screenshot(driver: Any, tmp_path: Path, name: str, *, publish: bool = False) -> None:
    """Save a screenshot to tmp_path; with `publish` and RIS_UI_SCREENSHOTS set, also to docs/img/."""
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    if publish and os.environ.get("RIS_UI_SCREENSHOTS"):
        from PIL import Image

        target = REPO / "docs" / "img" / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").quantize(colors=128).save(target, optimize=True)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "downloads").mkdir()
    with chromium(tmp_path / "profile", tmp_path / "downloads") as driver:
        yield driver


def _use_key(driver: Any, live: Live) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{live.url}/ui/")
    driver.find_element(By.ID, "api-key").send_keys(API_KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    until("the key to be kept", lambda: "key set" in driver.find_element(By.ID, "key-state").text)


def test_submit_watch_download_and_verdict(live: Live, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    driver.get(f"{live.url}/ui/")
    until("the 401 banner without a key", lambda: "401" in driver.find_element(By.ID, "banner").text)
    _use_key(driver, live)
    until("the job table", lambda: driver.find_element(By.ID, "jobs"))

    driver.get(f"{live.url}/ui/#/submit")
    Select(until("the kind field", lambda: driver.find_element(By.ID, "submit-kind"))).select_by_value("diagnostic")
    Select(driver.find_element(By.ID, "submit-preset")).select_by_value("")
    config = quick_diagnostic_config()
    config["data"]["n_train"] = 256  # a few more steps, so the charts fill while it runs
    config["debug"] = {"sleep_per_step_s": 0.1}
    driver.find_element(By.ID, "submit-name").send_keys("browser-quickstart")
    driver.execute_script("document.getElementById('submit-config').value = arguments[0]", json.dumps(config))
    driver.find_element(By.ID, "submit-button").click()

    until("the job page", lambda: "#/job/" in driver.current_url)
    job_id = driver.current_url.rsplit("/", 1)[1]

    def loss_points() -> int:
        return int(driver.find_element(By.CSS_SELECTOR, '.chart[data-title="Loss terms"]').get_attribute("data-points"))

    first = until("the loss chart's first points", lambda: loss_points() or None)
    until("the loss chart to gain points", lambda: loss_points() > first)
    screenshot(driver, tmp_path, "dashboard-job-running")

    verdict = until("the verdict", lambda: driver.find_element(By.ID, "verdict").text)
    assert verdict.startswith("Verdict: ") and any(s in verdict for s in ("PASS", "WARN", "FAIL"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#checks tbody tr")) >= 5
    loss_plot = 'img[data-name="loss_curves.png"]'
    plot = until("the loss curves plot", lambda: driver.find_element(By.CSS_SELECTOR, loss_plot))
    until("the plot to load", lambda: driver.execute_script("return arguments[0].naturalWidth", plot) > 100)
    assert "SUCCEEDED" in driver.find_element(By.ID, "job-head").text
    driver.find_element(By.CSS_SELECTOR, "#log-box summary").click()
    until("the job's log", lambda: "claimed job" in driver.find_element(By.ID, "log").text, deadline_s=30)
    events = driver.find_element(By.ID, "events").text
    assert "QUEUED" in events and "RUNNING" in events and "SUCCEEDED" in events

    final_link = '.checkpoint-link[data-name="final"]'
    link = until("a checkpoint link", lambda: driver.find_element(By.CSS_SELECTOR, final_link))
    sha256 = link.get_attribute("data-sha256")
    link.click()
    downloaded = tmp_path / "downloads" / f"{job_id}-final.pt"
    until("the downloaded checkpoint", lambda: downloaded.is_file() and downloaded.stat().st_size > 0)
    until("the download to finish", lambda: hashlib.sha256(downloaded.read_bytes()).hexdigest() == sha256)

    driver.execute_script("window.scrollTo(0, 0)")
    screenshot(driver, tmp_path, "dashboard-job", publish=True)
    driver.get(f"{live.url}/ui/#/jobs")
    row = until("the job in the list", lambda: driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{job_id}"]'))
    assert row.get_attribute("data-state") == "SUCCEEDED"
    screenshot(driver, tmp_path, "dashboard-jobs")
    assert {urlsplit(live.url).netloc} == requested_hosts(driver)


def test_validation_errors_are_shown_at_the_fields(live: Live, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    _use_key(driver, live)
    driver.get(f"{live.url}/ui/#/submit")
    Select(until("the kind field", lambda: driver.find_element(By.ID, "submit-kind"))).select_by_value("diagnostic")
    config = quick_diagnostic_config()
    config["data"]["batch_size"] = -1
    driver.execute_script("document.getElementById('submit-config').value = arguments[0]", json.dumps(config))
    driver.find_element(By.ID, "submit-config").send_keys(" ")  # an input event: a pasted config drops the preset
    driver.find_element(By.ID, "submit-button").click()
    errors = until("the config's field errors", lambda: driver.find_element(By.ID, "config-errors").text,
                   deadline_s=30)
    assert "data.batch_size" in errors
    assert "invalid" in driver.find_element(By.ID, "submit-config").get_attribute("class")
    assert "#/submit" in driver.current_url

    Select(driver.find_element(By.ID, "submit-kind")).select_by_value("evaluation")
    driver.execute_script("document.getElementById('submit-config').value = ''")
    driver.find_element(By.ID, "submit-button").click()  # an evaluation needs a config naming its checkpoint
    message = until("the config error", lambda: driver.find_element(By.ID, "error-config").text, deadline_s=30)
    assert "required" in message.lower()


def test_docs_pages_work_with_a_key_and_load_nothing_from_other_hosts(live: Live, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    driver = browser
    _use_key(driver, live)
    driver.get(f"{live.url}/docs")
    until("Swagger UI's operations", lambda: "/v1/jobs/{job_id}/metrics/stream" in
          driver.find_element(By.ID, "swagger-ui").text)
    driver.get(f"{live.url}/redoc")
    until("ReDoc's operations", lambda: "Create Job" in driver.find_element(By.ID, "redoc").text)
    assert {urlsplit(live.url).netloc} == requested_hosts(driver)


def test_two_runs_overlay_on_one_chart_and_the_list_filters(live: Live, browser: Any, finished_job: str,
                                                            tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with live.client() as client:
        config = quick_diagnostic_config()
        config["data"]["seed"] = 7  # another run: other scenes, a higher learning rate
        config["phases"][0]["lr"] = 3e-3
        other = client.submit("diagnostic", config, name="browser-compare")
        assert client.wait(other.id, timeout_s=300).state == "SUCCEEDED"
    driver = browser
    _use_key(driver, live)
    driver.get(f"{live.url}/ui/#/jobs")
    Select(until("the state filter", lambda: driver.find_element(By.ID, "filter-state"))).select_by_value("SUCCEEDED")
    until("only SUCCEEDED rows", lambda: {r.get_attribute("data-state") for r in
                                          driver.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")} == {"SUCCEEDED"},
          deadline_s=30)

    def tick(job_id: str) -> bool:  # the table is redrawn every 2 s: find and click in one go
        driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{job_id}"] input[type=checkbox]').click()
        return True

    for job_id in (finished_job, other.id):
        until("the job's row", lambda job_id=job_id: tick(job_id), deadline_s=30)
    driver.find_element(By.ID, "compare").click()
    until("the compare page", lambda: "#/compare?ids=" in driver.current_url, deadline_s=30)
    chart = until("the overlay chart", lambda: driver.find_element(By.CSS_SELECTOR, ".chart"), deadline_s=30)
    until("points of both runs", lambda: int(chart.get_attribute("data-points")) >= 8, deadline_s=30)
    legend = until("two series", lambda: [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".u-legend .u-label")
                                          if e.text and e.text != "step"], deadline_s=30)
    assert {finished_job[:8], other.id[:8]} <= {label.rsplit(" ", 1)[-1] for label in legend}
    screenshot(driver, tmp_path, "dashboard-compare", publish=True)
