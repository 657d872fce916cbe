from pathlib import Path

from streamlit.testing.v1 import AppTest

from storybook import registry
from storybook.book import load_book

APP = str(Path(__file__).parents[1] / "streamlit_app.py")


def app(home, monkeypatch) -> AppTest:
    monkeypatch.setenv("STORYBOOK_HOME", str(home))
    return AppTest.from_file(APP, default_timeout=60).run()


def test_add_character_reports_a_bad_photo_then_registers_and_removes(home, sample_photos, monkeypatch):
    at = app(home, monkeypatch)
    assert not at.exception
    at.text_input(key="name").input("Mia")
    photos = [(path.name, path.read_bytes(), "image/jpeg") for path in sample_photos]
    at.file_uploader(key="photos").set_value([*photos, ("note.jpg", b"not a photo", "image/jpeg")])
    at.button[0].click().run()
    assert any("note.jpg" in error.value and "not an image" in error.value for error in at.error)
    assert not (home / "characters" / "mia").exists()

    at.file_uploader(key="photos").set_value(photos)
    at.button[0].click().run()
    assert any("Added Mia" in message.value for message in at.success)
    assert (home / "characters" / "mia" / "character.json").exists()
    registered = registry.load_character(home, "Mia")
    assert [photo.original_name for photo in registered.photos] == [path.name for path in sample_photos]

    at.checkbox(key="confirm-mia").check().run()
    at.button(key="remove-mia").click().run()
    assert not (home / "characters" / "mia").exists()


def test_write_a_story_then_edit_move_and_refuse_a_bad_edit(family_home, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    at = app(family_home, monkeypatch)
    at.text_input(key="story-child").input("Mia")
    at.multiselect(key="story-characters").set_value(["Mia", "Rex"])
    at.text_input(key="story-theme").input("bath time")
    at.slider(key="story-pages").set_value(8)
    at.button(key="story-write").click().run()
    assert not at.exception
    [folder] = (family_home / "books").iterdir()
    book = load_book(folder)
    assert len(book.pages) == 8 and book.writer == "offline"

    second = book.pages[1]
    at.text_area(key=f"text-{folder.name}-{second.seed}").input("Mia splashes. Splash, splash!")
    at.button(key=f"save-{folder.name}-{second.seed}").click().run()
    assert load_book(folder).pages[1].text == "Mia splashes. Splash, splash!"

    at.button(key=f"up-{folder.name}-{second.seed}").click().run()
    assert load_book(folder).pages[0].seed == second.seed

    before = (folder / "book.json").read_text()
    at.text_area(key=f"text-{folder.name}-{second.seed}").input("Mia finds a knife.")
    at.button(key=f"save-{folder.name}-{second.seed}").click().run()
    assert any("knife" in error.value for error in at.error)
    assert (folder / "book.json").read_text() == before
