import os
from pathlib import Path

import pytest

from storybook.errors import InvalidNameError
from storybook.storage import atomic_write_text, build_folder, data_home, slugify


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


def test_a_folder_is_built_aside_and_moved_into_place_whole_or_not_at_all(tmp_path):
    target = tmp_path / "identity"
    with build_folder(target) as building:
        (building / "weights.bin").write_bytes(b"v1")
        assert not target.exists()  # nothing is visible until the build is complete
    assert (target / "weights.bin").read_bytes() == b"v1"

    with pytest.raises(KeyboardInterrupt), build_folder(target) as building:
        (building / "weights.bin").write_bytes(b"half")
        raise KeyboardInterrupt
    assert (target / "weights.bin").read_bytes() == b"v1"  # the old version stands, the half-built one is gone
    assert sorted(path.name for path in tmp_path.iterdir()) == ["identity"]

    with build_folder(target) as building:
        (building / "weights.bin").write_bytes(b"v2")
    assert (target / "weights.bin").read_bytes() == b"v2"
    with pytest.raises(OSError), build_folder(target, replace=False) as building:
        (building / "weights.bin").write_bytes(b"other")
    assert (target / "weights.bin").read_bytes() == b"v2"  # never merged into or replaced without `replace`
    assert sorted(path.name for path in tmp_path.iterdir()) == ["identity"]


def test_a_failed_final_move_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "identity"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"v1")
    real_rename = Path.rename

    def failing_rename(self, destination):
        if self.name.startswith(".identity-building-"):
            raise OSError(5, "Input/output error")
        return real_rename(self, destination)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError), build_folder(target) as building:
        (building / "weights.bin").write_bytes(b"v2")
    assert (target / "weights.bin").read_bytes() == b"v1"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["identity"]
