"""`make screenshots`: the README's pictures, made from a book storybook-mini draws, never by the tests.

Mia of the lab's world is registered from six photos, gets her image-prompt identity (seconds), and an 8-page offline
story about her is rendered on the CPU (a few minutes). Writes docs/screenshots/: photos.png (the registration
photos), page.png (a page of the book, as drawn) and the app's pages, clicked through in headless Chromium as the
browser test does (tests/browser_flow.py): characters.png, story.png, preview.png, export.png. Needs Debian's
`chromium` and playwright (the dev extra)."""

import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.browser_flow, when run as a script

from storybook import registry  # noqa: E402
from storybook.book import load_book, save_book  # noqa: E402
from storybook.lab.world import DEMO_TODDLER, write_photos  # noqa: E402
from storybook.models import load_tokenizer  # noqa: E402
from storybook.render.pages import render_book, with_settings  # noqa: E402
from storybook.storage import MINI_MODEL  # noqa: E402
from storybook.story.stage import StoryRequest, write_story  # noqa: E402
from storybook.training.personalize import build_identity  # noqa: E402
from tests.browser_flow import click_through, serve_app  # noqa: E402

SCREENSHOTS = ROOT / "docs" / "screenshots"
SHOWN_PAGE = 3  # the page shown beside the photos


def photo_strip(photos: list[Path], side: int = 160) -> Image.Image:
    """The photos side by side, each `side` pixels square."""
    strip = Image.new("RGB", (side * len(photos), side), "white")
    for index, photo in enumerate(photos):
        strip.paste(Image.open(photo).convert("RGB").resize((side, side)), (index * side, 0))
    return strip


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("make screenshots drives Chromium: install it (apt-get install chromium) and run it again.")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="storybook-screenshots-") as folder:
        home = Path(folder)
        photos = write_photos(home / "photos", DEMO_TODDLER, count=6)
        tokenizer = load_tokenizer(MINI_MODEL, home)
        registry.add_character(home, "Mia", photos, tokenizer, description=DEMO_TODDLER.description)
        build_identity(home, "Mia", "ip-adapter", MINI_MODEL)
        request = StoryRequest(child="Mia", theme="a day at the beach", pages=8, pronouns="she", seed=1)
        book_folder, book = write_story(home, request, "offline")
        save_book(book_folder, with_settings(book, {"model": MINI_MODEL}))
        render_book(home, book_folder)
        photo_strip(photos).save(SCREENSHOTS / "photos.png")
        page = load_book(book_folder).pages[SHOWN_PAGE - 1]
        Image.open(book_folder / page.image).resize((256, 256), Image.NEAREST).save(SCREENSHOTS / "page.png")
        # A generous start: the script may run beside a busy machine's other work.
        with serve_app(home, start_timeout=600) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            click_through(browser, url, book_folder, SCREENSHOTS)
            browser.close()
    print(f"Screenshots written to {SCREENSHOTS}")


if __name__ == "__main__":
    main()
