from pathlib import Path

from streamlit.testing.v1 import AppTest

from storybook import registry

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
