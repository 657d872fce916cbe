"""book.json: round trip, damaged and newer files refused and kept, atomic writes, book folders."""

import json
import os
import time

import pytest

from storybook.book import BOOK_FILE, book_dir, create_book, load_book, save_book
from storybook.errors import BookError
from storybook.story.stage import StoryRequest, write_story


@pytest.fixture
def book_folder(family_home):
    folder, _ = write_story(family_home, StoryRequest(child="Mia", theme="bedtime", pages=8, seed=1), "offline")
    return folder


def test_a_saved_book_loads_back_equal(book_folder):
    book = load_book(book_folder)
    edited = book.model_copy(update={"title": "Mia's Big Night"})
    save_book(book_folder, edited)
    assert load_book(book_folder) == edited
    assert json.loads((book_folder / BOOK_FILE).read_text())["version"] == 1


def test_a_damaged_book_is_reported_and_left_as_it_is(book_folder):
    record = book_folder / BOOK_FILE
    record.write_text('{"title": "Goodnight')
    with pytest.raises(BookError, match="damaged.*left as it is"):
        load_book(book_folder)
    assert record.read_text() == '{"title": "Goodnight'


def test_a_book_from_a_newer_storybook_is_refused(book_folder):
    record = book_folder / BOOK_FILE
    data = json.loads(record.read_text()) | {"version": 99}
    record.write_text(json.dumps(data))
    with pytest.raises(BookError, match="newer storybook"):
        load_book(book_folder)
    assert json.loads(record.read_text()) == data
    record.write_text(json.dumps(data | {"version": None}))
    with pytest.raises(BookError, match="damaged"):
        load_book(book_folder)


def test_a_crash_mid_write_leaves_the_previous_book_intact(book_folder, monkeypatch):
    before = (book_folder / BOOK_FILE).read_text()
    book = load_book(book_folder)

    def crash(*args):
        raise OSError("disk pulled out")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_book(book_folder, book.model_copy(update={"title": "Never Written"}))
    assert (book_folder / BOOK_FILE).read_text() == before
    assert [p.name for p in book_folder.iterdir()] == [BOOK_FILE]  # no temp file left behind


def test_books_with_the_same_title_get_their_own_folders(family_home, book_folder):
    second = create_book(family_home, load_book(book_folder))
    assert second.name == book_folder.name + "-2"
    assert book_dir(family_home, book_folder.name) == book_folder
    assert book_dir(family_home, str(second / BOOK_FILE)) == second


def test_any_title_gets_a_folder(family_home, book_folder):
    book = load_book(book_folder)
    assert create_book(family_home, book.model_copy(update={"title": "Day/Night... Mia"})).name == "day-night-mia"
    assert create_book(family_home, book.model_copy(update={"title": "🌙"})).name == "mia"


def test_a_missing_book_says_how_to_write_one(family_home):
    with pytest.raises(BookError, match="storybook story write"):
        load_book(book_dir(family_home, "no-such-book"))


@pytest.mark.parametrize(
    ("field", "value"),
    [("title", "Mia\x1b[2J\x1b[31m's night"), ("pages.0.text", "Nap time\u202e!"), ("pages.0.text", "x" * 10_000_000)],
)
def test_a_book_with_control_characters_or_a_huge_text_is_refused_at_once_and_left_as_it_is(book_folder, field, value):
    record = book_folder / BOOK_FILE
    data = json.loads(record.read_text())
    if field == "title":
        data["title"] = value
    else:
        data["pages"][0]["text"] = value
    record.write_text(json.dumps(data))
    before = record.read_bytes()
    started = time.perf_counter()
    with pytest.raises(BookError, match=f"damaged \\({field}: (holds control or invisible|String should have at most)"):
        load_book(book_folder)
    assert time.perf_counter() - started < 5 and record.read_bytes() == before


def test_a_page_text_and_a_dedication_may_hold_line_breaks(book_folder):
    book = load_book(book_folder)
    page = book.pages[0].model_copy(update={"text": "Splash!\nSplash!"})
    save_book(
        book_folder, book.model_copy(update={"dedication": "For Mia,\nwith love", "pages": [page, *book.pages[1:]]})
    )
    assert load_book(book_folder).pages[0].text == "Splash!\nSplash!"
