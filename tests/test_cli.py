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
