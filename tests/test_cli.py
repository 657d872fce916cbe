import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from storybook import registry
from storybook.cli import app

runner = CliRunner()
DEMO_FIELDS_RIGHT = 22  # of Mia's 7 identity fields x 12 pages, read right: 25 measured (docs/configuration.md)


def invoke(home, *args):
    return runner.invoke(app, ["--home", str(home), *args])


def test_character_add_list_show_remove(home, sample_photos):
    photos = [arg for path in sample_photos for arg in ("--photos", str(path))]
    added = invoke(home, "character", "add", "Mia", *photos, "--description", "curly red hair")
    assert added.exit_code == 0, added.output
    assert "Added Mia" in added.output
    listed = invoke(home, "character", "list")
    assert "mia" in listed.output and "toddler" in listed.output
    shown = invoke(home, "character", "show", "Mia")
    assert "curly red hair" in shown.output
    removed = invoke(home, "character", "remove", "Mia", "--yes")
    assert removed.exit_code == 0 and not (home / "characters" / "mia").exists()


def test_photo_captions_written_by_blip_at_registration_then_edited(home, sample_photos, tiny_blip):
    photos = [arg for path in sample_photos for arg in ("--photos", str(path))]
    added = invoke(home, "character", "add", "Mia", *photos, "--captioner", str(tiny_blip))
    assert added.exit_code == 0, added.output
    assert "Mia's photo captions" in added.output
    assert all(photo.caption for photo in registry.load_character(home, "Mia").photos)

    edited = invoke(home, "character", "caption", "Mia", "--photo", "2", "--text", "Mia waving at grandma")
    assert edited.exit_code == 0 and "Mia waving at grandma" in edited.output
    assert registry.load_character(home, "Mia").photos[1].caption == "Mia waving at grandma"
    half = invoke(home, "character", "caption", "Mia", "--photo", "2")
    assert half.exit_code == 1 and "--photo and --text together" in half.output
    beyond = invoke(home, "character", "caption", "Mia", "--photo", "9", "--text", "a photo")
    assert beyond.exit_code == 1 and "photos 1-5, not photo 9" in beyond.output


def test_errors_are_one_line_messages_with_exit_code_1(home, tmp_path):
    bad = tmp_path / "note.jpg"
    bad.write_text("not a photo")
    result = invoke(home, "character", "add", "../Mia", "--photos", str(bad))
    assert result.exit_code == 1
    assert "Error:" in result.output and "Traceback" not in result.output
    missing = invoke(home, "character", "train", "Nobody")
    assert missing.exit_code == 1 and "No character named" in missing.output


def test_remove_asks_for_confirmation(home, sample_photos):
    photos = [arg for path in sample_photos for arg in ("--photos", str(path))]
    invoke(home, "character", "add", "Mia", *photos)
    declined = runner.invoke(app, ["--home", str(home), "character", "remove", "Mia"], input="n\n")
    assert declined.exit_code != 0 and (home / "characters" / "mia").exists()


def test_story_write_show_edit_and_a_refused_edit(family_home, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    args = ["--child", "Mia", "--character", "Mia", "--character", "Rex", "--theme", "beach", "--pages", "8"]
    written = invoke(family_home, "story", "write", *args, "--seed", "3")
    assert written.exit_code == 0, written.output
    assert "Writing with the offline writer" in written.output
    [folder] = (family_home / "books").iterdir()
    listed = invoke(family_home, "story", "list")
    assert folder.name in listed.output and "offline" in listed.output
    edited = invoke(family_home, "story", "edit", folder.name, "2", "--text", "Mia digs. Dig, dig, dig!")
    assert edited.exit_code == 0, edited.output
    shown = invoke(family_home, "story", "show", folder.name)
    assert "Mia digs. Dig, dig, dig!" in shown.output and "zorv toddler" in shown.output
    before = (folder / "book.json").read_text()
    refused = invoke(family_home, "story", "edit", folder.name, "2", "--text", "Mia finds a knife.")
    assert refused.exit_code == 1 and "knife" in refused.output
    assert (folder / "book.json").read_text() == before
    added = invoke(family_home, "story", "add-page", folder.name, "--text", "Bye, sea!", "--scene", "qwib dog at sea")
    moved = invoke(family_home, "story", "move-page", folder.name, "1", "9")
    removed = invoke(family_home, "story", "remove-page", folder.name, "9")
    assert added.exit_code == moved.exit_code == removed.exit_code == 0, removed.output
    assert "Bye, sea!" in invoke(family_home, "story", "show", folder.name).output


def offline_book(home) -> str:
    """An 8-page offline story about Mia and Rex in `home` (no model needed); returns its folder's name."""
    args = ["--child", "Mia", "--character", "Mia", "--character", "Rex", "--theme", "beach", "--pages", "8"]
    written = invoke(home, "story", "write", *args, "--seed", "3", "--writer", "offline")
    assert written.exit_code == 0, written.output
    return next((home / "books").iterdir()).name


HOSTILE = [  # (arguments with BOOK for the book, what the one-line message says)
    (["render", "BOOK", "--weight", "Mia=nan"], "--weight takes NAME=NUMBER"),
    (["render", "BOOK", "--weight", "Mia=1e400"], "--weight takes NAME=NUMBER"),
    (["render", "BOOK", "--image-scale", "Mia=-2"], "Bad render settings, nothing was changed: image_scales.mia"),
    (["render", "BOOK", "--width", "12"], "Bad render settings, nothing was changed: width"),
    (["render", "BOOK", "--guidance", "inf"], "guidance: Input should be a finite number"),
    (["render", "BOOK", "--width", "64", "--native-size"], "--native-size forgets --width"),
    (["render", "BOOK", "--page", "99"], "no page 99"),
    (["render", "BOOK", "--page", "2", "--width", "64"], "Render settings are the whole book's"),
    (["story", "add-page", "BOOK", "--at", "0", "--text", "Hi!", "--scene", "zorv toddler waves"], "not 0"),
    (["story", "retitle", "BOOK", "--title", "Mia " * 400], "The title has 1599 characters; at most 80"),
    (["story", "retitle", "BOOK", "--title", "  "], "The title is empty"),
    (["story", "write", "--child", "Mia", "--theme", "beach", "--max-words", "-3"], "max_words_per_page"),
    (["story", "write", "--child", "", "--theme", "beach"], "child: String should have at least 1 character"),
    (["story", "write", "--child", "Mia", "--theme", "beach", "--dedication", "x" * 5000], "dedication"),
    (["export", "BOOK", "--out", "."], "is a folder, so nothing was written there"),
    (["character", "train", "Mia", "--device", "quantum"], "Unknown device 'quantum'"),
    (["character", "train", "Mia", "--lr", "inf"], "Invalid training settings (learning_rate"),
    (["character", "train", "Mia", "--snr-gamma", "-1"], "Invalid training settings (snr_gamma"),
    (["character", "add", "Leo", "--photos", "nowhere.jpg", "--class-noun", "../x"], "class noun"),
    (["character", "add", "Leo", "--photos", "nowhere"], "nowhere"),
    (["character", "show", "Mia" + "a" * 100], "No character named"),
]


@pytest.mark.parametrize(("args", "message"), HOSTILE, ids=[" ".join(a[:3])[:40] for a, _ in HOSTILE])
def test_bad_input_gets_one_line_and_changes_nothing(family_home, monkeypatch, args, message):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    book = offline_book(family_home)
    before = (family_home / "books" / book / "book.json").read_text()
    result = invoke(family_home, *[book if arg == "BOOK" else arg for arg in args])
    assert result.exit_code != 0 and not isinstance(result.exception, Exception)  # an exit, not a crash
    assert "Traceback" not in result.output and message in " ".join(result.output.split()), result.output
    assert (family_home / "books" / book / "book.json").read_text() == before
    assert len(list((family_home / "books").iterdir())) == 1


def test_photos_by_folder_or_many_after_one_flag_and_the_title_edited(home, sample_photos, tmp_path):
    folder = tmp_path / "phone"
    folder.mkdir()
    for photo in sample_photos:
        (folder / photo.name).write_bytes(photo.read_bytes())
    (folder / "notes.txt").write_text("not a photo")  # a folder may hold other files
    by_folder = invoke(home, "character", "add", "Mia", "--photos", str(folder))
    assert by_folder.exit_code == 0, by_folder.output
    many = invoke(home, "character", "add", "Leo", "--photos", *map(str, sample_photos))  # as the shell expands *.jpg
    assert many.exit_code == 0, many.output
    assert [len(c.photos) for c in registry.list_characters(home)] == [5, 5]


@pytest.mark.slow
def test_render_choose_and_export_from_the_command_line(studio, tmp_path):
    from pypdf import PdfReader

    from storybook.book import load_book

    written = invoke(
        studio, "story", "write", "--child", "Mia", "--character", "Mia", "--theme", "bath", "--pages", "8"
    )
    assert written.exit_code == 0, written.output
    book = next((studio / "books").iterdir()).name
    rendered = invoke(studio, "render", book, "--steps", "2", "--weight", "Mia=0.8", "--candidates", "2")
    assert rendered.exit_code == 0, rendered.output
    assert "18 pictures drawn, 0 already drawn" in rendered.output  # cover and 8 pages, two candidates each
    folder = studio / "books" / book
    assert load_book(folder).render.steps == 2 and load_book(folder).render.weights == {"mia": 0.8}

    chosen = invoke(studio, "choose", book, "3", "2")
    assert chosen.exit_code == 0, chosen.output
    assert load_book(folder).pages[2].image == load_book(folder).pages[2].candidates[1].image
    assert "0 pictures drawn, 9 already drawn" in invoke(studio, "render", book).output

    out = tmp_path / "bath.pdf"
    exported = invoke(studio, "export", book, "--out", str(out), "--profile", "screen", "--trim", "8x10")
    assert exported.exit_code == 0, exported.output
    assert len(PdfReader(out).pages) == 12 and float(PdfReader(out).pages[0].mediabox[3]) == 720

    missing = invoke(studio, "export", "no-such-book", "--out", str(tmp_path / "x.pdf"))
    assert missing.exit_code == 1 and "No book" in missing.output


@pytest.mark.slow
def test_demo_makes_a_book_end_to_end_with_mias_look(home):
    from PIL import Image
    from pypdf import PdfReader

    from storybook.book import list_books, load_book
    from storybook.lab import world
    from storybook.lab.evaluator import load_evaluator

    result = invoke(home, "demo")
    assert result.exit_code == 0, result.output
    pdf = home / "mia-at-the-beach.pdf"
    assert "Your book:" in result.output and pdf.is_file()
    assert "Built Mia's ip-adapter identity on storybook-mini" in result.output
    reader = PdfReader(pdf)
    assert len(reader.pages) == 16 and "The End" in reader.pages[14].extract_text()
    # The lab's evaluator reads the 12 story pages. Whole Mia (7 fields) is read on none yet (README: the target is 9,
    # missed); her single fields are held, so that a regression fails.
    [folder] = list_books(home)
    pictures = [Image.open(folder / page.image) for page in load_book(folder).pages]
    readings = load_evaluator().read(pictures)
    fields = [*world.ATTRIBUTES, *world.SIGNATURE]
    right = sum(reading[field] == getattr(world.DEMO_TODDLER, field) for reading in readings for field in fields)
    assert len(pictures) == 12 and right >= DEMO_FIELDS_RIGHT


def test_retitle_and_a_warning_for_glyphs_the_font_lacks(family_home):
    book = offline_book(family_home)
    retitled = invoke(family_home, "story", "retitle", book, "--title", "Mia ∘ the Sea", "--dedication", "For Mia")
    assert retitled.exit_code == 0, retitled.output
    assert "Warning: the title has '∘', which the book's font (Andika) lacks" in " ".join(retitled.output.split())
    shown = invoke(family_home, "story", "show", book)
    assert "Mia ∘ the Sea" in shown.output and "For Mia" in shown.output


def test_a_damaged_character_is_a_warning_line_and_the_others_are_listed(family_home):
    (family_home / "characters" / "odd").mkdir()
    (family_home / "characters" / "odd" / "character.json").write_text("{ half")
    listed = invoke(family_home, "character", "list")
    assert listed.exit_code == 0 and "mia" in listed.output and "rex" in listed.output
    assert "Warning:" in listed.output and "odd/character.json is damaged" in " ".join(listed.output.split())
    assert "UserWarning" not in listed.output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["story", "write", "--child", "Mia", "--theme", "beach", "--pages", "many"], "Invalid value for '--pages'"),
        (["story", "shw", "book"], "No such command 'shw'"),
        (["render"], "Missing argument 'book'"),
        (["render", "book", "--bogus"], "No such option: --bogus"),
    ],
)
def test_an_option_error_is_one_line_on_stderr_with_exit_code_1(family_home, args, said):
    result = invoke(family_home, *args)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and said in result.stderr and len(result.stderr.splitlines()) == 1


def test_an_error_is_one_unwrapped_line_on_stderr_with_control_characters_escaped(family_home):
    result = invoke(family_home, "story", "show", str(family_home / ("a-rather-long-folder-name-" * 4 + "\x1b[2J")))
    assert result.exit_code == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "\x1b" not in result.stderr and "\\x1b[2J" in result.stderr
    refused = invoke(family_home, "story", "write", "--child", "Mia\x1b]0;owned\x07", "--theme", "beach")
    assert refused.exit_code == 1 and "child: holds control or invisible characters (U+001B, U+0007)" in refused.stderr
    assert not (family_home / "books").exists()


def storybook_command(home, *args, **options) -> subprocess.CompletedProcess:
    """Run `storybook --home HOME ARGS` as a new process, as a user's shell does."""
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-c", "from storybook.cli import app; app()", "--home", str(home), *args]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300, **options)


@pytest.mark.parametrize(
    "args",
    [["config", "--device", "cpu"], ["character", "show", "Mia"], ["character", "caption", "Mia"]],
    ids=["config", "show", "caption"],
)
def test_commands_say_nothing_of_the_model_libraries(family_home, args):
    result = storybook_command(family_home, *args)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "transformers" not in result.stdout and "torchvision" not in result.stdout


def test_storybook_app_stopped_by_sigterm_or_sighup_stops_streamlit(tmp_path):
    root = Path(__file__).resolve().parent.parent
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-c", "from storybook.cli import app; app()", "--home", str(tmp_path), "app"]
        app_process = subprocess.Popen([*command, "--port", str(port)], cwd=root, stdout=subprocess.DEVNULL)
        streamlit = []
        try:
            deadline = time.monotonic() + 180
            while not answers(port):  # Streamlit serves
                assert app_process.poll() is None and time.monotonic() < deadline
                time.sleep(0.5)
            streamlit = psutil.Process(app_process.pid).children()
            app_process.send_signal(signum)
            assert app_process.wait(timeout=30) == 128 + signum
            _, alive = psutil.wait_procs(streamlit, timeout=30)
            assert alive == [] and not answers(port)
        finally:
            app_process.kill()  # nothing once it has ended
            for process in streamlit:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()


def answers(port: int) -> bool:
    with socket.socket() as client:
        return client.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_train_with_no_samples_draws_no_grid_and_leaves_none_of_an_earlier_identity(home, sample_photos):
    photos = [arg for path in sample_photos for arg in ("--photos", str(path))]
    assert invoke(home, "character", "add", "Mia", *photos).exit_code == 0
    options = ["--steps", "4", "--checkpoint-every", "2", "--no-prior-preservation"]
    folder = registry.character_dir(home, "Mia")
    with_grids = invoke(home, "character", "train", "Mia", "--method", "lora", *options)
    assert with_grids.exit_code == 0, with_grids.output
    assert (folder / "samples" / "step-000002.png").exists() and (folder / "samples" / "final.png").exists()
    trained = invoke(home, "character", "train", "Mia", "--method", "lora", *options, "--no-samples")
    assert trained.exit_code == 0, trained.output
    assert (folder / "identity").is_dir() and not (folder / "samples").exists()
    assert "Samples:" not in trained.output
