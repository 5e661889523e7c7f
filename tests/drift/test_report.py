"""The monitor's report in a real headless Chromium: two executions, their checks over time, the
most unusual images, all inline (no network)."""

from datetime import datetime, timedelta, timezone

from dogbreed.capture.writer import CaptureWriter
from dogbreed.data.synth import requests
from dogbreed.drift import execute

from .conftest import WORLD


def test_the_report_shows_each_check_over_the_executions_and_the_unusual_images(trained_run, baseline_dir, browser,
                                                                                 tmp_path):
    from selenium.webdriver.common.by import By

    capture, out = tmp_path / "capture", tmp_path / "monitoring"
    first = datetime(2026, 6, 1, 8, tzinfo=timezone.utc)
    writer = CaptureWriter(capture, "dogbreed").start()
    for hour, drift in enumerate(("none", "dark")):
        for i, (image, _) in enumerate(requests(40, draw=20 + hour, drift=drift, **WORLD)):
            writer.submit(f"{drift}-{i}", request=(image, "image/jpeg"), when=first + timedelta(hours=hour, seconds=i))
    writer.close()
    for hour in range(2):
        start = first + timedelta(hours=hour)
        done = execute.run(str(capture), str(baseline_dir), model=str(trained_run.artifact), out=str(out),
                           start=start.isoformat(), end=(start + timedelta(hours=1)).isoformat(), backend="eager",
                           progress=False)
    assert "brightness" in {c.name for c in done.violations}
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch: it works offline

    browser.get((out / "report.html").as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "table tr")[1:]
    assert len(rows) == len(done.checks)
    bad = {r.find_elements(By.TAG_NAME, "td")[0].text for r in rows if "bad" in r.get_attribute("class")}
    assert bad == {c.name for c in done.violations}
    plots = browser.find_elements(By.CSS_SELECTOR, "img[alt]")
    assert {p.get_attribute("alt") for p in plots} == {c.name for c in done.checks}  # one plot per check
    figures = browser.find_elements(By.TAG_NAME, "figure")
    assert len(figures) == execute.UNUSUAL
    drawn = browser.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    assert drawn and all(drawn)  # every plot and thumbnail decoded
    assert "2 execution(s) so far" in browser.find_element(By.TAG_NAME, "body").text
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
