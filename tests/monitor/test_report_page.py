"""The profile report in a real headless Chromium: its charts render offline, a screenshot is taken."""

import os
from pathlib import Path

from dogbreed.monitor.rules import RULES


def test_the_report_renders_its_charts_offline(profiled_run, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = profiled_run.run_dir / "profile" / "report.html"
    assert "<script src=" not in page.read_text() and "cdn" not in page.read_text().lower()[:2000]
    browser.get(page.as_uri())
    charts = browser.find_elements(By.CSS_SELECTOR, "div.chart")
    assert len(charts) >= 4  # system timeline, steps, data loading, debugger tensors
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.querySelectorAll('div.chart .js-plotly-plot .main-svg').length")
        >= len(charts))
    # Every chart drew its data: each plot has at least one trace with points.
    traces = browser.execute_script(
        "return Array.from(document.querySelectorAll('div.chart .js-plotly-plot')).map(p => p.querySelectorAll('.trace').length)")
    assert all(n > 0 for n in traces), traces
    rows = browser.find_elements(By.CSS_SELECTOR, "#rules tbody tr")
    assert sorted(r.find_element(By.TAG_NAME, "b").text for r in rows) == sorted(RULES)  # every rule, once
    assert rows[-1].find_element(By.CLASS_NAME, "badge").text in ("not applicable", "summary")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Profile report: profiled"
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    browser.set_window_size(1280, 4000)
    shot = Path(os.environ.get("DOGBREED_SCREENSHOTS", tmp_path)) / "profile-report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
