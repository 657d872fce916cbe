from typer.testing import CliRunner

from storybook.cli import app

runner = CliRunner()


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
