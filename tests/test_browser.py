"""The app in a real browser: `streamlit run` on localhost, driven by headless Chromium through Playwright, clicking
from page to page up to a rendered book and its PDF (tests/browser_flow.py). Its screenshots go to the test's
temporary folder; `make screenshots` makes the README's, of a storybook-mini book. Needs Debian's `chromium`
(`.ci/run` installs it); without it the test is skipped, saying so."""

import shutil

import pytest

from storybook.book import save_book
from storybook.render.pages import render_book, with_settings
from storybook.story.stage import StoryRequest, write_story
from tests.browser_flow import click_through, serve_app

pytestmark = pytest.mark.slow
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


@pytest.fixture
def served_app(studio):
    """The app served for a data root with a rendered 8-page book about Mia and Rex; yields its URL."""
    request = StoryRequest(child="Mia", characters=["Mia", "Rex"], theme="a day at the beach", pages=8, seed=4)
    folder, book = write_story(studio, request, "offline")
    save_book(folder, with_settings(book, {"steps": 2}))
    render_book(studio, folder)
    with serve_app(studio) as url:
        yield url, folder


def test_click_through_to_a_rendered_book_and_its_pdf(served_app, browser, tmp_path):
    url, folder = served_app
    pdf = click_through(browser, url, folder, tmp_path / "screenshots")
    assert pdf.read_bytes().startswith(b"%PDF")
