import json
import shutil
import threading

import pytest
from filelock import FileLock
from PIL import Image

from storybook import photos, registry
from storybook.errors import CharacterError, InvalidNameError, PhotoError
from storybook.tiny_model import build_tokenizer

TOKENIZER = build_tokenizer()


def add(home, name, photos, **kwargs):
    return registry.add_character(home, name, photos, TOKENIZER, **kwargs)


def test_add_writes_record_originals_and_square_crops(tmp_path, sample_photos):
    character = add(tmp_path, "Mia Rose", sample_photos, description="curly red hair")
    folder = tmp_path / "characters" / "mia-rose"
    assert character.slug == "mia-rose"
    saved = json.loads((folder / "character.json").read_text())
    assert saved["token"] == character.token and saved["schema_version"] == registry.SCHEMA_VERSION
    assert len(list((folder / "photos").iterdir())) == len(sample_photos)
    for record, original in zip(character.photos, sample_photos, strict=True):
        assert (folder / record.stored).read_bytes() == original.read_bytes()  # originals kept untouched
        with Image.open(folder / record.prepared) as crop:
            assert crop.width == crop.height and crop.mode == "RGB"
    assert character.instance_prompt == f"a photo of {character.token} toddler"


def test_characters_get_distinct_tokens_and_are_listed(tmp_path, sample_photos):
    first = add(tmp_path, "Mia", sample_photos)
    second = add(tmp_path, "Leo", sample_photos[:3], class_noun="boy")
    assert first.token != second.token
    assert [c.slug for c in registry.list_characters(tmp_path)] == ["leo", "mia"]
    assert registry.load_character(tmp_path, "Leo").class_noun == "boy"


def test_duplicate_and_unsafe_names_are_refused(tmp_path, sample_photos):
    add(tmp_path, "Mia", sample_photos)
    with pytest.raises(CharacterError, match="already exists"):
        add(tmp_path, "mia", sample_photos)
    for bad in ["../escape", "/abs/path", ""]:
        with pytest.raises(InvalidNameError):
            add(tmp_path, bad, sample_photos)
    assert not (tmp_path / "escape").exists()


def test_bad_photo_leaves_nothing_behind(tmp_path, sample_photos):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(PhotoError) as error:
        add(tmp_path, "Mia", [*sample_photos, corrupt])
    assert str(corrupt) in error.value.problems
    characters = tmp_path / "characters"
    assert not characters.exists() or list(characters.iterdir()) == []


def test_failure_while_preparing_leaves_nothing_behind(tmp_path, sample_photos, monkeypatch):
    calls = []

    def fail_on_third(image, resolution):
        calls.append(image)
        if len(calls) == 3:
            raise OSError("disk full")
        return image

    monkeypatch.setattr(photos, "prepare_photo", fail_on_third)
    with pytest.raises(OSError):
        add(tmp_path, "Mia", sample_photos)
    assert list((tmp_path / "characters").iterdir()) == []  # not even the hidden folder it was built in


def test_remove_deletes_every_file(tmp_path, sample_photos):
    add(tmp_path, "Mia", sample_photos)
    folder = tmp_path / "characters" / "mia"
    (folder / "identity").mkdir()
    (folder / "identity" / "weights.safetensors").write_bytes(b"x")
    registry.remove_character(tmp_path, "Mia")
    assert not folder.exists()
    assert list((tmp_path / "characters").iterdir()) == []
    with pytest.raises(CharacterError):
        registry.remove_character(tmp_path, "Mia")


def test_remove_waits_for_the_build_holding_the_characters_lock_and_leaves_no_trace(tmp_path, sample_photos):
    add(tmp_path, "Mia", sample_photos)
    folder = tmp_path / "characters" / "mia"
    waited, removed = threading.Event(), []
    build = FileLock(registry.character_lock(tmp_path, "mia"))  # a build of Mia's identity in another process
    build.acquire()
    remover = threading.Thread(target=lambda: removed.append(registry.remove_character(tmp_path, "Mia", waited.set)))
    remover.start()
    assert waited.wait(timeout=30)
    with pytest.raises(CharacterError, match="Mia is being removed"):  # what the build hears at its next step
        registry.check_not_removed(tmp_path, registry.load_character(tmp_path, "Mia"))
    assert folder.exists() and not removed  # nothing is deleted while the build can still write
    build.release()
    remover.join(timeout=30)
    assert removed == [folder] and list((tmp_path / "characters").iterdir()) == []  # no lock file with her name


def test_a_removal_stopped_half_way_blocks_builds_until_it_is_finished(tmp_path, sample_photos):
    character = add(tmp_path, "Mia", sample_photos)
    (tmp_path / "characters" / "mia" / registry.REMOVING).touch()  # `character remove` killed while it waited
    with pytest.raises(CharacterError, match="finished by `storybook character remove mia`"):
        registry.check_not_removed(tmp_path, character)
    registry.remove_character(tmp_path, "mia")
    assert list((tmp_path / "characters").iterdir()) == []
    add(tmp_path, "Mia", sample_photos)  # the name is free again


def test_damaged_or_newer_record_gives_clear_error(tmp_path, sample_photos):
    add(tmp_path, "Mia", sample_photos)
    record = tmp_path / "characters" / "mia" / "character.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(CharacterError, match="newer storybook"):
        registry.load_character(tmp_path, "Mia")
    record.write_text("{ half a file")
    with pytest.raises(CharacterError, match="damaged"):
        registry.load_character(tmp_path, "Mia")
    with pytest.warns(UserWarning, match="damaged"):
        assert registry.list_characters(tmp_path) == []  # skipped, so the others stay usable
    add(tmp_path, "Leo", sample_photos[:3])  # and new characters can still be added


def test_missing_character_names_the_known_ones(tmp_path, sample_photos):
    add(tmp_path, "Mia", sample_photos)
    with pytest.raises(CharacterError, match="Mia"):
        registry.load_character(tmp_path, "Nobody")


def test_a_long_name_is_found_again_and_listing_never_recurses(tmp_path, sample_photos):
    name = "Mia " + "a" * 59 + " Rose"  # its slug is cut at 64 characters, right after a dash
    character = add(tmp_path, name, sample_photos)
    assert registry.load_character(tmp_path, name).slug == character.slug == registry.slugify(character.slug)
    assert [c.name for c in registry.list_characters(tmp_path)] == [name]
    add(tmp_path, "Leo", sample_photos)  # adding after such a name still works
    (tmp_path / "characters" / "odd-").mkdir()
    (tmp_path / "characters" / "odd-" / "character.json").write_text("{}")
    with pytest.warns(UserWarning, match="not a valid character file"):
        assert len(registry.list_characters(tmp_path)) == 2
    shutil.copytree(tmp_path / "characters" / "leo", tmp_path / "characters" / ".leo-building-x1")  # killed at the move
    with pytest.warns(UserWarning, match="not a valid character file"):
        assert sorted(c.name for c in registry.list_characters(tmp_path)) == sorted([name, "Leo"])
    with pytest.raises(CharacterError, match="No character named 'Nobody'"):
        registry.load_character(tmp_path, "Nobody")


@pytest.mark.parametrize("noun", ["", "   ", "../toddler", "a/b", "toddler2", "x" * 41])
def test_a_class_noun_that_is_no_word_is_refused_when_added(tmp_path, sample_photos, noun):
    with pytest.raises(CharacterError, match="class noun"):
        add(tmp_path, "Mia", sample_photos, class_noun=noun)
    assert not (tmp_path / "characters" / "mia").exists()


def test_crop_paths_in_character_json_stay_inside_the_characters_folder(tmp_path, sample_photos):
    character = add(tmp_path, "Mia", sample_photos)
    folder = registry.character_dir(tmp_path, "Mia")
    record = json.loads((folder / "character.json").read_text())
    record["photos"][0]["prepared"] = "../../other-child/prepared/00.png"
    (folder / "character.json").write_text(json.dumps(record))
    with pytest.raises(CharacterError, match="not a path inside its folder"):
        registry.load_character(tmp_path, "Mia")
    (folder / "prepared" / "00.png").unlink()
    (folder / "prepared" / "00.png").symlink_to(sample_photos[0])  # a crop that is a link out of the folder
    with pytest.raises(CharacterError, match="points outside the character's folder \\(prepared/00.png\\)"):
        registry.prepared_photo_paths(tmp_path, character)
    assert (
        len(registry.prepared_photo_paths(tmp_path, character.model_copy(update={"photos": character.photos[1:]}))) == 4
    )
