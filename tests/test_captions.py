"""Photo captions: BLIP writes them from the user's weights (a random-weight BLIP of the real layout here), the parent
edits them, and nothing bad reaches character.json."""

import json
import shutil

import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, BlipForConditionalGeneration

from storybook import registry
from storybook.captions import MAX_NEW_TOKENS, NUM_BEAMS, caption_character, load_captioner
from storybook.errors import CharacterError, ModelError
from storybook.tiny_model import build_tokenizer


@pytest.fixture
def mia(tmp_path, sample_photos):
    registry.add_character(tmp_path, "Mia", sample_photos, build_tokenizer(), description="curly red hair")
    return tmp_path


def test_blip_captions_every_photo_as_transformers_own_captioning_does(mia, tiny_blip):
    character = caption_character(mia, "Mia", load_captioner(str(tiny_blip)))

    captions = [photo.caption for photo in character.photos]
    assert all(captions) and registry.load_character(mia, "Mia").photos == character.photos  # saved
    # The reference path of the model card: AutoProcessor + generate, on the same prepared crops.
    model = BlipForConditionalGeneration.from_pretrained(tiny_blip)
    processor = AutoProcessor.from_pretrained(tiny_blip)
    crops = [Image.open(path).convert("RGB") for path in registry.prepared_photo_paths(mia, character)]
    tokens = model.generate(
        **processor(images=crops, return_tensors="pt"), num_beams=NUM_BEAMS, max_new_tokens=MAX_NEW_TOKENS
    )
    assert captions == [" ".join(text.split()) for text in processor.batch_decode(tokens, skip_special_tokens=True)]


def test_blip_keeps_the_parents_captions_unless_told_to_replace_them(mia, tiny_blip):
    registry.set_photo_captions(mia, "Mia", {2: "Mia waving at grandma"})
    captioner = load_captioner(str(tiny_blip))

    kept = caption_character(mia, "Mia", captioner)
    assert kept.photos[1].caption == "Mia waving at grandma" and all(photo.caption for photo in kept.photos)
    replaced = caption_character(mia, "Mia", captioner, replace=True)
    crop = Image.open(registry.prepared_photo_paths(mia, replaced)[1])
    assert replaced.photos[1].caption == captioner.caption([crop])[0] != "Mia waving at grandma"


def test_a_missing_or_wrong_captioner_names_what_was_looked_for(tmp_path, sample_photos):
    with pytest.raises(ModelError, match="not in the Hugging Face cache.*hf download Salesforce/blip-nothing"):
        load_captioner("Salesforce/blip-nothing")
    with pytest.raises(ModelError, match="is not a BLIP captioning model"):
        load_captioner(str(sample_photos[0].parent))  # the photos' folder given by mistake


def test_a_captioner_with_nan_weights_or_cut_off_is_refused_and_no_caption_is_blanked(mia, tiny_blip, tmp_path):
    poisoned = tmp_path / "blip"
    shutil.copytree(tiny_blip, poisoned)
    weights = load_file(poisoned / "model.safetensors")
    weights[next(key for key in weights if key.endswith("weight"))].view(-1)[0] = float("nan")
    save_file(weights, poisoned / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"captioner .*blip is damaged: its weights hold NaN or infinite values"):
        load_captioner(str(poisoned))
    (poisoned / "model.safetensors").write_bytes((tiny_blip / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(ModelError, match=r"is damaged: .*model.safetensors cannot be read: it is cut off"):
        load_captioner(str(poisoned))
    assert all(photo.caption == "" for photo in registry.load_character(mia, "Mia").photos)


def test_the_parent_edits_captions_and_bad_ones_change_nothing(mia):
    before = (mia / "characters" / "mia" / "character.json").read_text()
    for bad in [{9: "a photo"}, {1: "fine", 2: "bell\x07"}, {1: "x" * 201}, {0: "no photo 0"}]:
        with pytest.raises(CharacterError):
            registry.set_photo_captions(mia, "Mia", bad)
        assert (mia / "characters" / "mia" / "character.json").read_text() == before

    edited = registry.set_photo_captions(mia, "Mia", {1: "  a little girl\tin a yellow\nshirt  ", 3: "at the beach"})
    assert [photo.caption for photo in edited.photos][:3] == ["a little girl in a yellow shirt", "", "at the beach"]
    cleared = registry.set_photo_captions(mia, "Mia", {3: ""})
    assert cleared.photos[2].caption == ""


def test_a_hostile_caption_in_character_json_is_refused_on_reading(mia):
    record = mia / "characters" / "mia" / "character.json"
    data = json.loads(record.read_text())
    data["photos"][0]["caption"] = "ok\u0000<script>"
    record.write_text(json.dumps(data))
    with pytest.raises(CharacterError, match="not a valid character file"):
        registry.load_character(mia, "Mia")
