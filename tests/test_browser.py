"""The Gradio app in a real browser: Debian's headless Chromium driven by Selenium.

Goes through every tab (with an upload, a bad upload, indexing a gallery and a
click on the identity map) and saves screenshots under test-artifacts/browser/.
The README's pictures of the app are this test on the shipped weights and the demo data:

    REID_BROWSER_WEIGHTS=weights REID_BROWSER_GALLERY=../shared/datasets/cuhk03-pair1 \
    REID_SCREENSHOTS=docs/img/app python -m pytest tests/test_browser.py -k every_tab

Skipped when chromium / chromedriver / selenium are absent (apt-get install -y
chromium chromium-driver; pip install selenium).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("REID_SCREENSHOTS") or Path(__file__).resolve().parents[1] / "test-artifacts" / "browser")

pytestmark = pytest.mark.timeout(600)


def _skip_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if not Path(CHROMEDRIVER).exists():
        return f"no chromedriver at {CHROMEDRIVER} (apt-get install -y chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402






@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    # the driver path is explicit, so Selenium Manager never tries to download one
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, cond, timeout=60, what="condition"):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(cond)
    except TimeoutException:
        driver.save_screenshot(str(ARTIFACTS / "timeout.png"))
        raise AssertionError(f"timed out waiting for {what}") from None


def _text(driver, css) -> str:
    els = driver.find_elements(By.CSS_SELECTOR, css)
    return els[0].text if els else ""


def _open_tab(driver, name):
    tabs = [b for b in driver.find_elements(By.CSS_SELECTOR, "button[role='tab']") if b.text.strip() == name]
    assert tabs, f"no tab {name!r}"
    tabs[0].click()
    time.sleep(0.5)


def _click(driver, elem_id):
    el = driver.find_element(By.CSS_SELECTOR, f"#{elem_id}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    el.click()


def _upload(driver, elem_id, path):
    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id}")
    clear = box.find_elements(By.CSS_SELECTOR, "button[aria-label='Clear'], button[title='Clear']")
    if clear:
        driver.execute_script("arguments[0].click();", clear[0])
        time.sleep(0.5)
    box.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(path))
    _wait(driver, lambda d: box.find_elements(By.CSS_SELECTOR, "img"), 30, f"the upload preview in #{elem_id}")


def _images_loaded(driver, css) -> int:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].filter(i => i.complete && i.naturalWidth > 0).length",
        css)


def _shoot(driver, name):
    driver.execute_script("document.querySelectorAll('.toast-close, [data-testid=\"toast-close\"]')"
                          ".forEach(b => b.click())")  # an earlier error's toast would cover the page
    h = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, max(1000, min(int(h) + 150, 4000)))
    time.sleep(0.7)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    driver.set_window_size(1400, 1000)


def _toasts(driver) -> str:
    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".toast-body, [data-testid='toast-body']"))


@pytest.fixture(scope="module")
def app_under_test(request, synthetic_market):
    """(url, gallery folder): the tiny-weights server, or REID_BROWSER_WEIGHTS / _GALLERY's."""
    weights = os.environ.get("REID_BROWSER_WEIGHTS")
    if not weights:
        yield request.getfixturevalue("server"), synthetic_market
        return
    from conftest import free_port

    from app.gradio_app import build_demo, serve
    from reid_core import ReIDEngine
    gallery = Path(os.environ.get("REID_BROWSER_GALLERY") or synthetic_market).resolve()
    demo = build_demo(ReIDEngine.from_pretrained(weights, device="cpu"), gallery=str(gallery))
    serve(demo, port=(port := free_port()), block=False)
    yield f"http://127.0.0.1:{port}/", gallery
    demo.close()


def test_every_tab(app_under_test, browser, tmp_path):
    server, gallery = app_under_test
    d = browser
    d.get(server)
    _wait(d, lambda d: "Generative person re-identification" in d.page_source, 60, "the page")
    _wait(d, lambda d: d.title == "Generative person re-identification", 30, "the app's page title")
    query = sorted((gallery / "query").glob("*.jpg"))[0]

    # ---- Generate: the first visit already shows a result; generate 8 more
    _wait(d, lambda d: "4 image(s)" in _text(d, "#gen-caption"), 60, "the first visit's pictures")
    assert _images_loaded(d, "#gen-out img") >= 1
    seeds = d.find_element(By.CSS_SELECTOR, "#gen-seeds textarea, #gen-seeds input")
    seeds.clear()
    seeds.send_keys("0-7")
    _click(d, "gen-btn")
    _wait(d, lambda d: "8 image(s)" in _text(d, "#gen-caption"), 60, "8 generated images")
    # from a photo (an upload)
    _upload(d, "gen-photo", query)
    d.find_element(By.XPATH, "//*[@id='gen-source']//label[contains(., 'From a photo')]").click()
    _click(d, "gen-btn")
    _wait(d, lambda d: "uploaded photo" in _text(d, "#gen-caption"), 60, "generation from the photo")
    _shoot(d, "1-generate")

    # ---- Invert: upload, both methods, a bad upload, swap
    _open_tab(d, "Invert")
    _upload(d, "inv-photo", query)
    _click(d, "inv-btn")
    _wait(d, lambda d: "PSNR" in _text(d, "#inv-caption") and "img2noise" in _text(d, "#inv-caption"), 60, "inversion")
    d.find_element(By.XPATH, "//label[contains(., 'ddim')]").click()
    _click(d, "inv-btn")
    _wait(d, lambda d: "ddim" in _text(d, "#inv-caption"), 60, "DDIM inversion")
    assert d.find_elements(By.CSS_SELECTOR, "#inv-plot .js-plotly-plot"), "the identity bar chart"
    assert _images_loaded(d, "#inv-noise img") == 1 and _images_loaded(d, "#inv-rec img") == 1
    _click(d, "swap-btn")
    _wait(d, lambda d: "on the photo's noise" in d.page_source, 60, "the swap")
    _upload(d, "swap-photo", query)    # the person of a photo on the inverted photo's noise
    d.find_element(By.XPATH, "//*[@id='swap-source']//label[contains(., 'From a photo')]").click()
    _click(d, "swap-btn")
    _wait(d, lambda d: "uploaded photo" in d.page_source and "on the photo's noise" in d.page_source, 60,
          "the swap of a photo's person")
    _shoot(d, "2-invert")
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("this is text, not a JPEG")
    box = d.find_element(By.CSS_SELECTOR, "#inv-photo")
    clear = box.find_elements(By.CSS_SELECTOR, "button[aria-label='Clear'], button[title='Clear']")
    if clear:
        d.execute_script("arguments[0].click();", clear[0])
        time.sleep(0.5)
    box.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(bad))
    time.sleep(1.5)
    _click(d, "inv-btn")
    _wait(d, lambda d: "not an image" in _toasts(d) or "not an image" in d.page_source, 30,
          "the error message for a bad upload")
    _shoot(d, "3-invert-bad-upload")

    # ---- Latent sliders: opening the tab loads an identity and its sensitivity
    _open_tab(d, "Latent sliders")
    _wait(d, lambda d: "training identity #0" in _text(d, "#lat-caption"), 60, "the default identity")
    _click(d, "lat-sens-btn")
    _wait(d, lambda d: "that move this picture most" in _text(d, "#lat-sens-caption"), 90, "the sensitivity")
    assert len(d.find_elements(By.CSS_SELECTOR, "[id^='lat-dim-']")) == 32
    before = d.execute_script("return document.querySelector('#lat-out img').src")
    _click(d, "lat-random")
    _wait(d, lambda d: "sampled from the prior" in _text(d, "#lat-caption"), 60, "a random identity")
    _wait(d, lambda d: d.execute_script("return document.querySelector('#lat-out img').src") != before, 30,
          "a new picture")
    _shoot(d, "4-latent-sliders")

    # ---- Re-identify: index the gallery, query with a photo
    _open_tab(d, "Re-identify")
    _click(d, "index-btn")
    _wait(d, lambda d: "images indexed" in _text(d, "#gallery-status"), 90, "gallery indexing")
    _upload(d, "reid-photo", query)
    _click(d, "reid-btn")
    _wait(d, lambda d: _images_loaded(d, "#reid-gallery img") >= 3 and _images_loaded(d, "#reid-ids img") >= 3,
          60, "re-identification results")
    assert "pid" in _text(d, "#reid-gallery") and "pid" in _text(d, "#reid-ids")
    _shoot(d, "5-reidentify")

    # ---- Identity map: the plot appears, a click on a point shows that identity
    _open_tab(d, "Identity map")
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#idmap-plot .js-plotly-plot .scatterlayer, "
                                                        "#idmap-plot .js-plotly-plot canvas"), 120, "the map")
    _wait(d, lambda d: "training identities" in _text(d, "#idmap-caption"), 60, "the map caption")
    d.execute_script("""
        const gd = document.querySelector('#idmap-plot .js-plotly-plot');
        gd.emit('plotly_click', {points: [{customdata: [3, 4], data: {name: 'training identities'}}]});""")
    _wait(d, lambda d: "#3" in d.page_source and "Training identity" in d.page_source, 30, "identity #3")
    _wait(d, lambda d: _images_loaded(d, "#idmap-portrait img") == 1, 30, "the portrait")
    _upload(d, "idmap-photo", query)
    _click(d, "idmap-btn")
    _wait(d, lambda d: "Your photo" in _text(d, "#idmap-caption"), 60, "the photo on the map")
    _shoot(d, "6-identity-map")

    # the server still serves after all of it
    d.get(server)
    _wait(d, lambda d: "Generative person re-identification" in d.page_source, 60, "the page again")


def test_streamlit_server_serves_pictures_without_errors(browser, tiny_weights, synthetic_market, tmp_path):
    """The Streamlit app as a visitor gets it (`python -m app.streamlit_server`): the page, its
    favicon and every st.image file answer 200, and the server log has no error or traceback."""
    import subprocess
    import sys
    import urllib.request
    from conftest import free_port
    port = free_port()
    log = tmp_path / "streamlit.log"
    env = dict(os.environ, REID_WEIGHTS=str(tiny_weights), PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.streamlit_server", "--server.headless", "true", "--server.port", str(port),
             "--browser.gatherUsageStats", "false", "--", "--gallery", str(synthetic_market)],
            cwd=Path(__file__).resolve().parents[1], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait(browser, lambda d: _http_ok(url), 90, "the Streamlit server")
        browser.get(url)
        _wait(browser, lambda d: _images_loaded(d, "img[src*='/media/']") >= 2, 180, "the first page's pictures")
        # the script run must end before the server stops: Streamlit 1.60 stopped mid-run logs
        # its own "Event loop is closed" traceback, which is about the shutdown, not the app
        _wait(browser, lambda d: d.execute_script(
            "return document.querySelector('[data-testid=\"stApp\"]').dataset.testScriptState") == "notRunning",
            180, "the script run to finish")
        browser.save_screenshot(str(ARTIFACTS / "streamlit.png"))
        srcs = browser.execute_script("return [...document.querySelectorAll(\"img[src*='/media/']\")].map(i => i.src)")
        for src in [url + "favicon.png", *srcs]:
            with urllib.request.urlopen(src, timeout=30) as r:
                assert r.status == 200 and r.read(), src
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text and "Error" not in text and "error" not in text.lower().replace(
        "gatherusagestats", ""), text[-3000:]


def _http_ok(url) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False
