"""The app driven in a real browser, as a parent clicks through it: served by `streamlit run` on localhost, then
Characters, Story, Preview and Export up to the PDF, a screenshot of each page saved. The browser test runs it on the
tiny model into its temporary folder; `make screenshots` (scripts/screenshots.py) on a storybook-mini book into
docs/screenshots/."""

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storybook.cli import app_command_line


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_app(data_root: Path, start_timeout: float = 60) -> Iterator[str]:
    """The app served for `data_root` (as `storybook app` serves it); yields its URL. Raises AssertionError when it
    has not started within `start_timeout` seconds."""
    port = free_port()
    command = app_command_line(port) + ["--server.headless=true", "--server.address=127.0.0.1"]  # `storybook app`
    # Started from the data root, not the project: the app's settings must hold whatever the folder.
    server = subprocess.Popen(command, cwd=data_root, env={**os.environ, "STORYBOOK_HOME": str(data_root)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + start_timeout
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "the app did not start"
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def settle_and_screenshot(page, screenshots: Path, name: str) -> None:
    """Let the page finish drawing (images decoded, no script run showing), then save the screenshot."""
    page.wait_for_function("[...document.images].every(image => image.complete)")
    page.wait_for_timeout(1500)
    page.screenshot(path=screenshots / name, full_page=True)


def click_through(browser, url: str, book_folder: Path, screenshots: Path, character: str = "Mia — toddler") -> Path:
    """Open the app at `url` in `browser` (Playwright's Chromium) and click from page to page up to the PDF of the
    rendered book in `book_folder`, saving characters.png, story.png, preview.png and export.png in `screenshots`.
    Returns the PDF the app built."""
    screenshots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_label("Name").wait_for()
    assert page.get_by_text("Deploy").count() == 0  # no developer toolbar for parents (.streamlit/config.toml)
    page.get_by_text(character).click()  # open the character: its crops, training and samples
    page.get_by_role("button", name="Train again").first.wait_for()
    page.wait_for_function("document.querySelectorAll('[data-testid=stImage] img').length >= 6")
    settle_and_screenshot(page, screenshots, "characters.png")

    page.get_by_role("link", name="Story").click()
    page.get_by_text("Page 1:").first.wait_for()
    page.get_by_text("Page 1:").first.click()
    settle_and_screenshot(page, screenshots, "story.png")

    page.get_by_role("link", name="Preview").click()
    page.get_by_text("Render every page").wait_for()
    page.get_by_text("Page 8").first.wait_for()
    page.wait_for_function("document.querySelectorAll('[data-testid=stImage] img').length >= 9")
    settle_and_screenshot(page, screenshots, "preview.png")

    page.get_by_role("link", name="Export").click()
    page.get_by_role("button", name="Build the PDF").click()
    page.get_by_text("Download the PDF").wait_for()
    settle_and_screenshot(page, screenshots, "export.png")
    return book_folder / "exports" / f"{book_folder.name}-8.5x8.5-kdp.pdf"
