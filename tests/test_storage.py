import os

import pytest

from storybook.errors import InvalidNameError
from storybook.storage import atomic_write_text, data_home, slugify


@pytest.mark.parametrize("name", ["../evil", "..", "/etc/passwd", "a/b", "a\\b", "", "   ", "!!!"])
def test_slugify_refuses_unsafe_or_empty_names(name):
    with pytest.raises(InvalidNameError):
        slugify(name)


@pytest.mark.parametrize(
    ("name", "slug"), [("Mia", "mia"), ("Mia Rose", "mia-rose"), ("Zoë", "zoë"), ("Léo 2", "léo-2")]
)
def test_slugify_makes_folder_names(name, slug):
    assert slugify(name) == slug


def test_data_home_prefers_option_then_env_then_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STORYBOOK_HOME", raising=False)
    assert data_home() == tmp_path.resolve()
    monkeypatch.setenv("STORYBOOK_HOME", str(tmp_path / "env"))
    assert data_home() == (tmp_path / "env").resolve()
    assert data_home(tmp_path / "opt") == (tmp_path / "opt").resolve()


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "book.json"
    atomic_write_text(target, "old")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["book.json"]  # no temp file left behind


@pytest.mark.parametrize("name", ["a" * 63 + " b", "Mia " * 30, "x" * 64 + "-y", "---Mia---"])
def test_a_slug_is_its_own_slug_and_never_ends_in_a_dash(name):
    slug = slugify(name)
    assert len(slug) <= 64 and not slug.endswith("-") and slugify(slug) == slug
