"""The app's main flows with Streamlit's AppTest on the tiny model, each page in turn, asserting on files and state."""

import hashlib
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from storybook import registry
from storybook.book import load_book, save_book
from storybook.config import load_config
from storybook.identities.record import read_identity
from storybook.jobs import read_job
from storybook.render.configure import update_config
from storybook.render.pages import with_settings
from storybook.story.stage import StoryRequest, write_story
from storybook.tiny_model import build_tokenizer

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


def test_the_parent_edits_the_photo_captions_and_blip_fills_in_the_rest(home, sample_photos, tiny_blip, monkeypatch):
    registry.add_character(home, "Mia", sample_photos, build_tokenizer())
    at = app(home, monkeypatch)

    def box(number):
        return next(box for box in at.text_input if box.label == f"Photo {number}")

    def click(label):
        next(button for button in at.button if button.label == label).click().run()

    box(2).input("Mia waving at grandma")
    click("Save captions")
    assert not at.exception and not at.error
    assert [photo.caption for photo in registry.load_character(home, "Mia").photos][:3] == [
        "",
        "Mia waving at grandma",
        "",
    ]
    click("Caption with BLIP")
    assert any("Name the BLIP weights first" in error.value for error in at.error)
    next(box for box in at.text_input if box.label.startswith("Or caption")).input(str(tiny_blip))
    click("Caption with BLIP")
    captions = [photo.caption for photo in registry.load_character(home, "Mia").photos]
    assert captions[1] == "Mia waving at grandma" and all(captions)  # the parent's caption is kept
    assert [box(number).value for number in range(1, 6)] == captions  # the boxes show what was saved
    click("Save captions")  # saving the boxes as shown changes nothing
    assert [photo.caption for photo in registry.load_character(home, "Mia").photos] == captions


def test_write_a_story_then_edit_move_and_refuse_a_bad_edit(family_home, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    at = app(family_home, monkeypatch).switch_page("app_pages/story.py").run()
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

    book = load_book(folder)
    saved = hashlib.sha256(f"{book.title}\n{book.dedication}".encode()).hexdigest()[:8]
    at.text_input(key=f"title-{folder.name}-{saved}").input("Mia ∘ and the Bath")
    at.button[[b.label for b in at.button].index("Save title and dedication")].click().run()
    assert load_book(folder).title == load_book(folder).cover.text == "Mia ∘ and the Bath"  # the cover says it too
    assert any("the title has '∘'" in warning.value for warning in at.warning)  # a glyph Andika lacks


def wait_for_job(home, kind, target, timeout=180):
    """The state of the job once it is no longer running."""
    deadline = time.time() + timeout
    while (state := read_job(home, kind, target)).status == "running":
        assert time.time() < deadline, f"{kind} {target} still running: {state}"
        time.sleep(0.2)
    return state


@pytest.mark.slow
def test_train_in_the_background_with_progress_cancel_and_resume(home, sample_photos, monkeypatch):
    registry.add_character(home, "Mia", sample_photos, build_tokenizer())
    at = app(home, monkeypatch)
    at.number_input(key="steps-mia").set_value(150)
    at.button(key="train-mia").click().run()
    deadline = time.time() + 120
    while (state := read_job(home, "train", "mia")).done < 2:  # class images first, then steps
        assert state.status == "running" and time.time() < deadline, state
        time.sleep(0.2)
    at.run()
    assert any("loss" in bar.proto.text for bar in at.get("progress"))  # live step, loss and time left
    at.button(key="cancel-train-mia").click().run()
    state = wait_for_job(home, "train", "mia")
    assert state.status == "cancelled" and "checkpoint" in state.message
    folder = registry.character_dir(home, "mia")
    assert (folder / "checkpoints").is_dir() and not (folder / "identity").exists()

    at.run()
    assert at.button(key="train-mia").label == "Resume training"
    at.number_input(key="steps-mia").set_value(150)
    at.button(key="train-mia").click().run()
    state = wait_for_job(home, "train", "mia")
    assert state.status == "done" and "Trained" in state.message
    at.run()
    assert any("Trained" in message.value for message in at.success)
    assert (folder / "identity" / "identity.json").is_file() and (folder / "samples" / "final.png").is_file()


@pytest.mark.slow
def test_a_stopped_run_whose_captions_changed_cannot_resume_and_starts_over(home, sample_photos, monkeypatch):
    registry.add_character(home, "Mia", sample_photos, build_tokenizer())
    at = app(home, monkeypatch)
    at.radio(key="method-mia").set_value("AUTOMATIC1111 hypernetwork (minutes)")  # it trains on the captions
    at.number_input(key="steps-mia").set_value(150)
    at.button(key="train-mia").click().run()
    deadline = time.time() + 120
    while read_job(home, "train", "mia").done < 2:
        assert time.time() < deadline
        time.sleep(0.2)
    at.button(key="cancel-train-mia").click().run()
    assert wait_for_job(home, "train", "mia").status == "cancelled"
    registry.set_photo_captions(home, "Mia", {1: "Mia waving"})
    at.run()
    at.button(key="train-mia").click().run()  # "Resume training"
    state = wait_for_job(home, "train", "mia")
    assert state.status == "failed" and "captions of Mia's photos changed" in state.message, state

    at.number_input(key="steps-mia").set_value(20)
    at.button(key="restart-mia").click().run()
    state = wait_for_job(home, "train", "mia")
    assert state.status == "done" and "Trained" in state.message
    assert read_identity(registry.identity_folder(home, "mia")).captions[0].endswith("Mia waving")


def test_on_storybook_mini_a_character_learns_its_look_from_the_photos_in_seconds(home, monkeypatch):
    from storybook.lab import world
    from storybook.models import load_tokenizer

    update_config(home, {"model": "storybook-mini"})  # what a parent's app uses (it beats $STORYBOOK_MODEL=tiny)
    photos = world.write_photos(home / "photos", world.DEMO_TODDLER)
    registry.add_character(home, "Mia", photos, load_tokenizer("storybook-mini", home))
    at = app(home, monkeypatch)
    assert at.radio(key="method-mia").value == "From the photos (ready in seconds)"  # the default there
    at.button(key="train-mia").click().run()
    state = wait_for_job(home, "train", "mia", timeout=60)
    assert state.status == "done" and "Learned the look from 5 photos" in state.message
    assert (registry.identity_folder(home, "mia") / "image_prompt.json").is_file()
    assert not (registry.character_dir(home, "mia") / "checkpoints").exists()  # nothing was trained


def test_the_settings_page_shows_and_changes_the_model_and_refuses_one_not_on_disk(home, monkeypatch):
    at = app(home, monkeypatch).switch_page("app_pages/settings.py").run()
    assert not at.exception
    assert at.table[0].value.loc["model", "value"] == "tiny"  # $STORYBOOK_MODEL (the suite's)
    assert any("The base model tiny is on this machine" in message.value for message in at.success)

    at.text_input[0].input("someone/not-downloaded")
    at.selectbox[1].select("bf16")
    at.button[0].click().run()
    assert any("hf download someone/not-downloaded" in error.value for error in at.error)
    assert not (home / "config.json").exists()  # nothing saved

    at.text_input[0].input("storybook-mini")
    at.button[0].click().run()
    assert not at.error and load_config(home).model == "storybook-mini" and load_config(home).dtype == "bf16"
    assert at.table[0].value.loc["model", "from"] == "config.json"


@pytest.mark.slow
def test_preview_render_redraw_a_page_choose_a_candidate_and_export(studio, monkeypatch):
    request = StoryRequest(child="Mia", characters=["Mia", "Rex"], theme="bath time", pages=8, seed=2)
    folder, book = write_story(studio, request, "offline")
    save_book(folder, with_settings(book, {"steps": 2}))

    at = app(studio, monkeypatch).switch_page("app_pages/preview.py").run()
    at.button(key="render-all").click().run()
    assert wait_for_job(studio, "render", folder.name).status == "done"
    at.run()
    assert not at.exception
    book = load_book(folder)
    assert all((folder / page.image).is_file() for page in [book.cover, *book.pages])

    at.button(key=f"reseed-{folder.name}-2").click().run()
    assert wait_for_job(studio, "render", folder.name).status == "done"
    redrawn = load_book(folder).pages[1]
    assert redrawn.seed != book.pages[1].seed and (folder / redrawn.image).is_file()
    assert redrawn.image != book.pages[1].image

    at.run()
    at.button(key=f"candidates-{folder.name}-3").click().run()
    assert wait_for_job(studio, "render", folder.name).status == "done"
    at.run()
    candidates = load_book(folder).pages[2].candidates
    assert len(candidates) == 3
    at.button(key=f"use-{folder.name}-3-2").click().run()
    assert load_book(folder).pages[2].image == candidates[1].image

    at.switch_page("app_pages/export.py").run()
    at.selectbox(key="export-profile").set_value("screen")
    at.button(key="export-build").click().run()
    assert wait_for_job(studio, "export", folder.name).status == "done"
    at.run()
    assert not at.error, [error.value for error in at.error]
    pdf = folder / "exports" / f"{folder.name}-8.5x8.5-screen.pdf"
    assert pdf.is_file() and pdf.read_bytes().startswith(b"%PDF")
    assert at.get("download_button")


def test_a_cancelled_render_keeps_the_loaded_renderer_for_the_next_one(studio, monkeypatch):
    from app_pages.common import renderers  # the server-wide cache the app's pages share (same process as AppTest)

    request = StoryRequest(child="Mia", characters=["Mia"], theme="bath time", pages=8, seed=3)
    folder, book = write_story(studio, request, "offline")
    save_book(folder, with_settings(book, {"steps": 80}))
    renderers()["renderer"] = None
    at = app(studio, monkeypatch).switch_page("app_pages/preview.py").run()
    at.button(key="render-all").click().run()
    deadline = time.time() + 120
    while (state := read_job(studio, "render", folder.name)).done < 1:  # the pipeline is loaded, drawing has begun
        assert state.status == "running" and time.time() < deadline, state
        time.sleep(0.1)
    at.run()
    at.button(key=f"cancel-render-{folder.name}").click().run()
    assert wait_for_job(studio, "render", folder.name).status == "cancelled"
    loaded = renderers()["renderer"]
    assert loaded is not None  # not loaded again by the next render

    at.run()
    at.button(key="render-all").click().run()
    assert wait_for_job(studio, "render", folder.name).status == "done"
    assert renderers()["renderer"] is loaded
