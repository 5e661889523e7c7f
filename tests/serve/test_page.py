"""The web page in a real headless Chromium: upload a photo, read the rendered answer."""

import json
import os
from pathlib import Path

from .test_routes import invoke


def test_upload_a_photo_and_read_the_breeds(server, samples, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    photo = samples / "Beagle_01125.jpg"  # under the test server's 1 MB body limit
    expected = json.loads(invoke(server, photo.read_bytes())[2])
    browser.get(server + "/")
    assert browser.title == "dogbreed"
    upload = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false", upload)
    upload.send_keys(str(photo))
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .row")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#results .row")
    assert [r.find_element(By.CLASS_NAME, "breed").text for r in rows] == expected["breeds"]
    assert [r.get_attribute("data-label") for r in rows] == expected["topk_labels"]
    first = rows[0].find_element(By.CLASS_NAME, "prob").text
    assert first == f"{100 * expected['topk_probs'][0]:.1f}%"
    verdict = browser.find_element(By.CSS_SELECTOR, "#results .verdict")
    assert verdict.get_attribute("data-verdict") == expected["verdict"]
    words = {"breed": f"This looks like a {expected['breeds'][0]}.", "unsure": "Not sure", "not_a_dog": "Not a dog"}
    assert verdict.text.startswith(words[expected["verdict"]])
    shot = Path(os.environ.get("DOGBREED_SCREENSHOTS", tmp_path)) / "page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_a_bad_file_shows_the_error(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    browser.get(server + "/")
    upload = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false", upload)
    upload.send_keys(str(bad))
    error = WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .error")))
    assert "cannot decode" in error.text


def test_the_api_page_lists_the_routes_offline(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/docs")
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#routes .route")))
    paths = {r.get_attribute("data-path") for r in browser.find_elements(By.CSS_SELECTOR, "#routes .route")}
    assert {"/ping", "/invocations", "/endpoints/{name}/invocations", "/predict", "/metrics"} <= paths
    assert browser.find_element(By.ID, "error").text == ""
    assert "curl -F image=@dog.jpg " + server + "/predict" in browser.find_element(By.TAG_NAME, "body").text
