"""Batch export from spec files: each book written, rendered and exported; a broken spec stops only its own book."""

import json

import pytest
import yaml
from pypdf import PdfReader
from typer.testing import CliRunner

from storybook.batch import load_spec, make_books
from storybook.cli import app
from storybook.cluster import RaySettings
from storybook.errors import BookError

pytestmark = pytest.mark.slow


def write_spec(folder, name, **fields):
    spec = {"child": "Mia", "theme": "a day at the beach", "pages": 8, "seed": 1, "writer": "offline"}
    spec |= {"output": f"out/{name}.pdf", "render": {"steps": 2}} | fields
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_make_exports_good_books_and_reports_the_broken_one(studio, tmp_path):
    beach = write_spec(tmp_path, "beach", characters=["Mia", "Rex"], profile="lulu")
    broken = write_spec(tmp_path, "broken", characters=["Nobody"])
    bath = tmp_path / "bath.json"
    bath.write_text(json.dumps({"child": "Mia", "theme": "bath time", "writer": "offline", "output": "bath.pdf"}))

    result = CliRunner().invoke(app, ["--home", str(studio), "make", str(beach), str(broken), str(bath)])
    assert result.exit_code == 1, result.output
    assert "1 of 3 books failed" in result.output and "Nobody" in result.output
    assert len(PdfReader(tmp_path / "out" / "beach.pdf").pages) == 12
    assert PdfReader(tmp_path / "out" / "beach.pdf").pages[0].trimbox[0] == 9  # lulu: bleed on every side
    assert len(PdfReader(tmp_path / "bath.pdf").pages) == 16  # 12 pages by default
    assert not (tmp_path / "out" / "broken.pdf").exists()

    again = make_books(studio, [beach], say=lambda line: None)
    assert again[0].error is None and again[0].pages == 12
    book = json.loads((studio / "books" / "beach" / "book.json").read_text())
    assert book["render"]["steps"] == 2


def test_making_again_reuses_the_story_and_pictures_unless_the_story_changed(studio, tmp_path):
    spec = write_spec(tmp_path, "story", characters=["Mia"])
    lines: list[str] = []
    make_books(studio, [spec], say=lines.append)
    assert any("writing the story" in line for line in lines) and any("9 pictures drawn" in line for line in lines)

    lines.clear()
    make_books(studio, [spec], say=lines.append)
    assert any("reusing the story" in line for line in lines) and any("0 pictures drawn" in line for line in lines)

    write_spec(tmp_path, "story", characters=["Mia"], theme="bath time")
    lines.clear()
    make_books(studio, [spec], say=lines.append)
    assert any("writing the story" in line for line in lines)


def test_bad_specs_name_the_file_and_the_field(tmp_path):
    typo = write_spec(tmp_path, "typo", colour="red")
    with pytest.raises(BookError, match="typo.yaml.*\n.*colour"):
        load_spec(typo)
    not_yaml = tmp_path / "list.yaml"
    not_yaml.write_text("- just\n- a list\n")
    with pytest.raises(BookError, match="not a mapping"):
        load_spec(not_yaml)
    steps_typo = write_spec(tmp_path, "steps", render={"stpes": 2})
    with pytest.raises(BookError, match="steps.yaml.*\n.*render.*unknown render settings \\['stpes'\\]"):
        load_spec(steps_typo)


def test_two_specs_of_the_same_file_name_never_share_a_book(studio, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_spec(tmp_path / "a", "trip", characters=["Mia"])
    second = write_spec(tmp_path / "b", "trip", characters=["Mia"], theme="bath time")
    made = make_books(studio, [first, second, first], say=lambda line: None)
    assert [result.error for result in made] == [None, None, None]
    books = {json.loads((studio / "books" / name / "book.json").read_text())["theme"] for name in ("trip", "trip-2")}
    assert books == {"a day at the beach", "bath time"}
    assert not (studio / "books" / "trip-3").exists()  # the first spec found its own book again


def test_a_specs_ray_setting_is_read_and_checked_with_the_spec(tmp_path):
    assert load_spec(write_spec(tmp_path, "on", ray=True)).ray == RaySettings()
    assert load_spec(write_spec(tmp_path, "off", ray=False)).ray is None
    settings = {"address": "ray://head.example:10001", "workers": 4, "gpus_per_worker": 0.5, "shared": True}
    assert load_spec(write_spec(tmp_path, "cluster", ray=settings)).ray == RaySettings(**settings)
    for bad, field in (({"address": "head"}, "ray.address"), ({"gpu": 1}, "ray.gpu"), ("yes please", "ray")):
        with pytest.raises(BookError, match=f"bad.yaml has bad fields:\\n  {field}"):
            load_spec(write_spec(tmp_path, "bad", ray=bad))
