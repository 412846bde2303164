"""`mmgen serve` end to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
the command's own start-up serves the page on 127.0.0.1 (in this process, so torch and Gradio are not
imported twice), the browser types a caption, clicks Generate and finds images of the model's size; bad
uploads show their one-line messages and the page keeps working.

Only loopback is reached: the server listens on 127.0.0.1, the browser resolves no other host, and every
wait is bounded."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmgen_lightning.cli import start_serving
from tests.test_serve import checkpoints  # noqa: F401 - the tiny checkpoints fixture

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason=(
    "no headless browser: install Debian's chromium and chromium-driver (`make test` does it where it runs "
    "apt-get as root)"))

WAIT_S = 90


def chromium(width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     # loopback only: any other host name fails to resolve
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture
def page(checkpoints, tmp_path) -> Iterator[tuple[object, str]]:  # noqa: F811 - pytest fixture by name
    """`mmgen serve --ckpt vae.ckpt --port 0` (everything `main` does but block), and Chromium on its page."""
    app = start_serving(["--ckpt", str(checkpoints["vae"]), "--port", "0", "--out", str(tmp_path / "out")])
    driver = None
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/?", app.local_url), app.local_url  # loopback by default
        driver = chromium()
        driver.set_page_load_timeout(WAIT_S)
        driver.get(app.local_url)
        yield driver, app.local_url
    finally:
        if driver is not None:
            driver.quit()
        app.close()


def open_tab(driver, name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    tab = WebDriverWait(driver, WAIT_S).until(ready.element_to_be_clickable(
        (By.XPATH, f"//button[@role='tab' and normalize-space()='{name}']")))
    tab.click()


def test_caption_to_image_in_a_real_browser(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    driver, _ = page
    wait = WebDriverWait(driver, WAIT_S)
    open_tab(driver, "text->image")
    prefix = "#vae-ckpt-text-to-image"
    caption = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, f"{prefix}-caption textarea")))

    # an empty caption: a one-line message in the page, nothing generated
    driver.find_element(By.CSS_SELECTOR, f"{prefix}-generate").click()
    wait.until(lambda d: "caption: type a caption first" in d.find_element(By.TAG_NAME, "body").text)

    caption.send_keys("class one")
    driver.find_element(By.CSS_SELECTOR, f"{prefix}-generate").click()
    sizes_script = (f"return Array.from(document.querySelectorAll('{prefix}-gallery img'))"
                    ".filter(i => i.complete && i.naturalWidth > 0).map(i => [i.naturalWidth, i.naturalHeight]);")
    sizes = wait.until(lambda d: d.execute_script(sizes_script) or False)
    assert sizes and all(size == [16, 16] for size in sizes), sizes  # the model's image_size
    command = driver.find_element(By.CSS_SELECTOR, f"{prefix}-command textarea").get_attribute("value")
    assert command.startswith("mmgen generate --ckpt ") and "--text 'class one'" in command, command
    driver.save_screenshot(str(tmp_path / "text_to_image.png"))

    # a 50 MB file and a file that is not an image: one-line messages, and the page goes on
    open_tab(driver, "image->text")
    upload_field = (By.CSS_SELECTOR, "#vae-ckpt-image-to-text-image input[type=file]")
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as handle:  # sparse: nothing is written
        handle.truncate(50 * 2**20)
    wait.until(ready.presence_of_element_located(upload_field)).send_keys(str(huge))
    wait.until(lambda d: 'exceed the maximum allowed size of 20.0 Mb: "huge.png"' in
               d.find_element(By.TAG_NAME, "body").text)
    notes = tmp_path / "notes.png"
    notes.write_text("these are words, not pixels")
    wait.until(ready.presence_of_element_located(upload_field)).send_keys(str(notes))
    driver.find_element(By.CSS_SELECTOR, "#vae-ckpt-image-to-text-generate").click()
    wait.until(lambda d: "notes.png is not an image the server can read" in d.find_element(By.TAG_NAME, "body").text)

    open_tab(driver, "text->image")
    caption.clear()
    caption.send_keys("class two")
    driver.find_element(By.CSS_SELECTOR, f"{prefix}-generate").click()
    wait.until(lambda d: "--text 'class two'" in
               d.find_element(By.CSS_SELECTOR, f"{prefix}-command textarea").get_attribute("value"))
