"""The web page in a real headless Chromium: upload a photo, read the rendered answer."""

import json
import os
from pathlib import Path

from .conftest import running_server
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
    heatmap = browser.find_element(By.ID, "heatmap")  # where the model looked, under the answer
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap) > 0
    toggle = browser.find_element(By.ID, "show-heatmap")
    assert heatmap.is_displayed() and toggle.is_selected()
    toggle.click()
    assert not heatmap.is_displayed()
    toggle.click()
    assert heatmap.is_displayed()
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


def test_the_api_key_is_kept_for_the_tab_only(trained_run, samples, browser):
    """Asked for once a request gets 401, then remembered in the tab's sessionStorage, not in
    localStorage, which outlives the browser session on the disk."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    def upload(photo, wanted: str):
        browser.execute_script("document.getElementById('results').replaceChildren()")
        field = browser.find_element(By.ID, "file")
        browser.execute_script("arguments[0].hidden = false", field)
        field.send_keys(str(photo))
        return WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#results {wanted}")))

    with running_server(trained_run.artifact, "--api-key", "s3cret-key") as url:
        browser.get(url + "/")
        assert "API key" in upload(samples / "Beagle_01125.jpg", ".error").text
        WebDriverWait(browser, 10).until(ec.visibility_of_element_located((By.ID, "key"))).send_keys("s3cret-key")
        upload(samples / "Boxer_02426.jpg", ".row")
        stored = "return [sessionStorage.getItem('dogbreed-key'), localStorage.getItem('dogbreed-key')]"
        assert browser.execute_script(stored) == ["s3cret-key", None]
        browser.refresh()  # the same tab: still known
        assert browser.find_element(By.ID, "key").get_attribute("value") == "s3cret-key"
        browser.switch_to.new_window("tab")  # another tab starts without it
        browser.get(url + "/")
        assert browser.find_element(By.ID, "key").get_attribute("value") == ""
        assert browser.execute_script(stored) == [None, None]
