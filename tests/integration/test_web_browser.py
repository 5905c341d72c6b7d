"""The web dashboard in a real headless Chromium against a real fleet: the fleet page lists the hosts, a job's page
draws its progress chart and shows output lines while the trainer prints them, a signed-in operator's cancel reaches
the trainer, an anonymous viewer gets no output and no actions, and hostile text stays text (no script runs).

With MQFLEET_WRITE_SCREENS=1 the pages' screenshots (390 and 1280 px wide) go to docs/screens/ (else to tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil

from mqfleet.wire.topics import Topics, encode
from tests.fixtures.common import wait_until
from tests.fixtures.fleet import OPERATOR_TOKEN, trainer_processes
from tests.fixtures.web import HOSTILE_HTML, WebFleet, stream_events

ROOT = Path(__file__).resolve().parents[2]
SWEEP = """\
[[sweeps]]
model = "talker"
name = "lr-sweep"
seed = [1, 2]
hyper = { steps = 4, interval_s = 0.05 }
"""


def by_css(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, css))


def texts(driver: Any, css: str) -> list[str]:
    """The texts of the elements `css` selects now; [] when the page replaced one while it was read (a live update
    between finding an element and reading it), so that a wait asks again instead of failing."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return [e.text for e in by_css(driver, css)]
    except StaleElementReferenceException:
        return []


def sign_in(driver: Any, url: str) -> None:
    driver.get(f"{url}/signin?next=/fleet")
    by_css(driver, "#token")[0].send_keys(OPERATOR_TOKEN)
    by_css(driver, "#signin")[0].click()
    wait_until(lambda: by_css(driver, ".badge.op"), timeout_s=10, what="the operator badge after sign-in")


def pwned(driver: Any) -> bool:
    return bool(driver.execute_script("return window.__pwned === 1"))


def shoot(driver: Any, folder: Path, name: str) -> None:
    """The page at phone and desktop widths, whole (the window as tall as the page)."""
    for width, label in ((390, "phone"), (1280, "desktop")):
        driver.set_window_size(width, 900)
        # the charts follow the new width before the picture is taken
        driver.execute_async_script("""const done = arguments[arguments.length - 1];
            const charts = window.Plotly ? [...document.querySelectorAll('.chart')] : [];
            Promise.all(charts.map(c => window.Plotly.Plots.resize(c))).then(() => done(), () => done());""")
        height = int(driver.execute_script("return Math.min(document.documentElement.scrollHeight, 4000)"))
        driver.set_window_size(width, max(700, height))
        driver.save_screenshot(str(folder / f"web-{name}-{label}.png"))
    driver.set_window_size(1280, 900)


def test_the_dashboard_in_a_browser_follows_a_job_live_and_an_operator_cancels_it(
        web_fleet: WebFleet, browser: Any, mqtt_connect: Any, tmp_path: Path) -> None:
    screens = ROOT / "docs" / "screens" if os.environ.get("MQFLEET_WRITE_SCREENS") else tmp_path
    hostile_name = "talky <b>" + HOSTILE_HTML[:40]
    web_fleet.start({"model": "talker", "name": "warmup", "hyper": {"steps": 3, "interval_s": 0.05}},
                    {"model": "talker", "name": hostile_name, "hyper": {"steps": 400, "interval_s": 0.25}},
                    sweeps=SWEEP)
    fleet, url = web_fleet.fleet, web_fleet.url
    mqtt_connect().publish_wait(Topics(fleet.prefix).advert("evil-host"),
                                encode({"host": "evil-host", "os": HOSTILE_HTML, "torch": HOSTILE_HTML, "slots": 1}),
                                retain=True)
    fleet.start_agent("host-a", slots=3)
    job = wait_until(lambda: next((j for j in fleet.client().jobs() if j["name"] == hostile_name
                                   and j["status"] == "running"), None), timeout_s=30, what="the long job to run")

    # the fleet page: both hosts, the hostile advert as text, no script ran
    browser.get(f"{url}/fleet")
    wait_until(lambda: {"host-a", "evil-host"} <= set(texts(browser, ".host-id")), timeout_s=15,
               what="both hosts on the fleet page")
    assert any(HOSTILE_HTML[:30] in e.text for e in by_css(browser, ".advert")), "the hostile advert shows as its text"
    assert not by_css(browser, "#hosts img") and not pwned(browser)
    shoot(browser, screens, "fleet")

    # anonymous: the job's page shows state and curve, no output, no actions
    browser.get(f"{url}/jobs/{job['id']}")
    assert by_css(browser, "h1.job-name")[0].text == hostile_name and not pwned(browser)
    assert by_css(browser, "#output-hidden") and not by_css(browser, "#output") and not by_css(browser, "#cancel")
    wait_until(lambda: by_css(browser, "#progress-charts .chart svg"), timeout_s=20, what="the progress chart")
    shoot(browser, screens, "job-anonymous")

    # the same job's event stream: state changes for everyone, output lines for an operator only
    live = f"/live?view=job&job={job['id']}"
    with web_fleet.client() as anon:
        anonymous_events = stream_events(anon, live, 3.0)
    assert "job_state" in anonymous_events and "lines" not in anonymous_events, anonymous_events
    with web_fleet.client() as operator:
        web_fleet.sign_in(operator)
        assert "lines" in stream_events(operator, live, 3.0)

    # signed in: output lines arrive while the trainer prints them, the chart grows
    sign_in(browser, url)
    shoot(browser, screens, "fleet-operator")
    browser.get(f"{url}/jobs/{job['id']}")
    wait_until(lambda: texts(browser, "#live-state")[:1] == ["live"] and by_css(browser, "#output"), timeout_s=15,
               what="the output panel and its live stream")
    first = len(by_css(browser, "#output .line"))
    wait_until(lambda: len(by_css(browser, "#output .line")) >= first + 3, timeout_s=20,
               what="new output lines to appear without a reload")
    assert any("talker step" in e.text for e in by_css(browser, "#output .line")[-4:])
    charts = by_css(browser, "#progress-charts .chart")
    assert {c.get_attribute("data-metric") for c in charts} >= {"loss", "progress", "acc"}
    shoot(browser, screens, "job-operator")

    # the operator cancels: the trainer ends, the job is cancelled, the page says so
    assert trainer_processes(fleet.dir / "work" / "host-a")
    by_css(browser, "#cancel")[0].click()
    browser.switch_to.alert.accept()
    wait_until(lambda: texts(browser, "#job-status")[:1] == ["cancelled"],
               timeout_s=20, what="the page to show the job cancelled")
    assert "cancelled" in by_css(browser, ".note")[0].text
    assert fleet.client().job(job["id"]).status == "cancelled"
    wait_until(lambda: not [p for p in trainer_processes(fleet.dir / "work" / "host-a") if p.is_running()
                            and p.status() != psutil.STATUS_ZOMBIE], timeout_s=20, what="the trainer process to end")

    # the other pages, for the screenshots, and the hostile name once more on the jobs list
    fleet.wait_for_status({"lr-sweep-seed=1": "completed", "lr-sweep-seed=2": "completed"}, timeout_s=60)
    browser.get(f"{url}/jobs")
    wait_until(lambda: hostile_name in texts(browser, "#jobs td.name a"), timeout_s=10,
               what="the hostile name as text in the jobs list")
    shoot(browser, screens, "jobs")
    browser.get(f"{url}/sweeps/lr-sweep")
    wait_until(lambda: by_css(browser, "#compare-charts .chart svg"), timeout_s=20, what="the sweep's chart")
    shoot(browser, screens, "sweep")
    browser.delete_all_cookies()
    browser.get(f"{url}/signin")
    shoot(browser, screens, "signin")
    assert not pwned(browser)
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE" and "favicon" not in e["message"]]
    assert errors == [], errors
