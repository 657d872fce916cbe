"""The app in a real browser: `streamlit run` on localhost, driven by headless Chromium through Playwright, clicking
from page to page up to a rendered book and its PDF. It saves a screenshot of each page to docs/screenshots/ (the
README shows them). Needs Debian's `chromium` (`.ci/run` installs it); without it the test is skipped, saying so."""

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from storybook.book import save_book
from storybook.cli import app_command_line
from storybook.render.pages import render_book, with_settings
from storybook.story.stage import StoryRequest, write_story

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser():
    """Headless Chromium, or a loud skip naming what is missing."""
    if CHROMIUM is None:
        pytest.skip("NO BROWSER TEST: Chromium is not installed (`apt-get install chromium`; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="NO BROWSER TEST: pip install playwright")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served_app(studio):
    """The app served for a data root with a rendered 8-page book about Mia and Rex; yields its URL."""
    request = StoryRequest(child="Mia", characters=["Mia", "Rex"], theme="a day at the beach", pages=8, seed=4)
    folder, book = write_story(studio, request, "offline")
    save_book(folder, with_settings(book, {"steps": 2}))
    render_book(studio, folder)
    port = free_port()
    command = app_command_line(port) + ["--server.headless=true", "--server.address=127.0.0.1"]  # `storybook app`
    # Started from the data root, not the project: the app's settings must hold whatever the folder.
    server = subprocess.Popen(command, cwd=studio, env={**os.environ, "STORYBOOK_HOME": str(studio)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            assert time.time() < deadline and server.poll() is None, "the app did not start"
            time.sleep(0.5)
    yield url, folder
    server.terminate()
    server.wait(10)


def settle_and_screenshot(page, name: str) -> None:
    """Let the page finish drawing (images decoded, no script run showing), then save the screenshot."""
    page.wait_for_function("[...document.images].every(image => image.complete)")
    page.wait_for_timeout(1500)
    page.screenshot(path=SCREENSHOTS / name, full_page=True)


def test_click_through_to_a_rendered_book_and_its_pdf(served_app, browser):
    url, folder = served_app
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_label("Name").wait_for()
    assert page.get_by_text("Deploy").count() == 0  # no developer toolbar for parents (.streamlit/config.toml)
    page.get_by_text("Mia — toddler").click()  # open Mia: her crops, training and samples
    page.get_by_role("button", name="Train again").first.wait_for()
    page.wait_for_function("document.querySelectorAll('[data-testid=stImage] img').length >= 6")
    settle_and_screenshot(page, "characters.png")

    page.get_by_role("link", name="Story").click()
    page.get_by_text("Page 1:").first.wait_for()
    page.get_by_text("Page 1:").first.click()
    settle_and_screenshot(page, "story.png")

    page.get_by_role("link", name="Preview").click()
    page.get_by_text("Render every page").wait_for()
    page.get_by_text("Page 8").first.wait_for()
    page.wait_for_function("document.querySelectorAll('[data-testid=stImage] img').length >= 9")
    settle_and_screenshot(page, "preview.png")

    page.get_by_role("link", name="Export").click()
    page.get_by_role("button", name="Build the PDF").click()
    page.get_by_text("Download the PDF").wait_for()
    settle_and_screenshot(page, "export.png")
    pdf = folder / "exports" / f"{folder.name}-8.5x8.5-kdp.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
