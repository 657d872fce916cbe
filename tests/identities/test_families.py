"""SDXL identities: trained on a tiny SDXL-shaped pipeline with both text encoders, pooled embeddings and time ids,
saved in diffusers' and kohya's formats, loaded by diffusers into a fresh SDXL pipeline and drawn through the book."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from storybook import registry
from storybook.book import load_book
from storybook.errors import TrainingError
from storybook.identities import load_identity
from storybook.identities.families import Conditioning, concatenated
from storybook.identities.lora import KOHYA_FILE, LORA_FILE
from storybook.identities.record import read_identity
from storybook.models import load_tokenizer
from storybook.render.configure import update_config
from storybook.render.pages import render_book
from storybook.training.loop import train_identity
from tests.render.test_pages import new_book, pixels

QUICK = {"steps": 6, "num_class_images": 2, "class_image_steps": 2, "checkpoint_every": 3}


@pytest.fixture
def xl_mia(home, tiny_sdxl, sample_photos):
    """Mia registered with the tiny SDXL model's tokenizer, in a data root whose base model it is."""
    update_config(home, {"model": str(tiny_sdxl)})
    return registry.add_character(home, "Mia", sample_photos, load_tokenizer(str(tiny_sdxl), home))


def fresh_sdxl(tiny_sdxl) -> StableDiffusionXLPipeline:
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def draw(pipeline, prompt: str) -> np.ndarray:
    generator = [torch.Generator("cpu").manual_seed(seed) for seed in (0, 1)]
    return pipeline([prompt] * 2, num_inference_steps=4, generator=generator, output_type="np").images


def test_conditioning_indexes_and_concatenates_every_input_along_the_batch():
    first = Conditioning(torch.zeros(2, 77, 8), {"text_embeds": torch.zeros(2, 4), "time_ids": torch.zeros(2, 6)})
    second = Conditioning(torch.ones(1, 77, 8), {"text_embeds": torch.ones(1, 4), "time_ids": torch.ones(1, 6)})
    both = concatenated([first[torch.tensor([1])], second.expand(3)])
    assert len(both) == 4 and both.added["time_ids"].shape == (4, 6)
    assert both.added["text_embeds"][:, 0].tolist() == [0, 1, 1, 1]
    assert Conditioning(torch.zeros(1, 77, 8)).unet_inputs()["added_cond_kwargs"] is None  # SD 1.x/2.x


def test_an_sdxl_lora_trains_both_text_encoders_loads_in_diffusers_and_kohya_form_and_draws_the_book(
    home, tiny_sdxl, xl_mia
):
    settings = QUICK | {"train_text_encoder": True, "learning_rate": 1e-2}
    metadata = train_identity(home, "Mia", "lora", overrides=settings, export_kohya=True, show_progress=False)
    folder = registry.character_dir(home, "Mia") / "identity"
    assert metadata.base_model == str(tiny_sdxl) and metadata.cross_attention_dim == 64
    assert read_identity(folder).files == [LORA_FILE, KOHYA_FILE]
    diffusers_keys = load_file(folder / LORA_FILE).keys()
    assert {key.split(".")[0] for key in diffusers_keys} == {"unet", "text_encoder", "text_encoder_2"}
    kohya_prefixes = {key.split("_")[1] for key in load_file(folder / KOHYA_FILE)}
    assert kohya_prefixes == {"unet", "te1", "te2"}  # SDXL's names, as A1111 and ComfyUI read them

    base = draw(fresh_sdxl(tiny_sdxl), xl_mia.instance_prompt)
    pictures = {}
    for weight_name in (LORA_FILE, KOHYA_FILE):
        pipeline = fresh_sdxl(tiny_sdxl)
        pipeline.load_lora_weights(folder, weight_name=weight_name, adapter_name="mia")
        assert "mia" in pipeline.text_encoder.peft_config and "mia" in pipeline.text_encoder_2.peft_config
        pictures[weight_name] = draw(pipeline, xl_mia.instance_prompt)
    assert not np.allclose(pictures[LORA_FILE], base, atol=1e-3)  # the identity changes what is drawn
    np.testing.assert_allclose(pictures[KOHYA_FILE], pictures[LORA_FILE], atol=1e-5)

    book_folder = new_book(home, characters=("Mia",))  # the data root's model: the tiny SDXL one
    report, renderer = render_book(home, book_folder)
    book = load_book(book_folder)
    assert book.render.model == str(tiny_sdxl) and type(renderer.pipeline).__name__ == "StableDiffusionXLPipeline"
    assert report.drawn == 9 and "mia" in renderer.adapters
    with_mia = [page for page in [book.cover, *book.pages] if "mia" in page.characters]
    before = {page.image: pixels(book_folder, page.image) for page in with_mia}
    report, _ = render_book(home, book_folder, settings={"weights": {"mia": 0.0}}, renderer=renderer)
    assert report.drawn == len(with_mia)  # the identity's weight is part of every page it is on...
    after = load_book(book_folder)
    changed = [page for page in [after.cover, *after.pages] if "mia" in page.characters]
    assert all(
        not np.array_equal(before[old.image], pixels(book_folder, new.image))
        for old, new in zip(with_mia, changed, strict=True)
    )


def test_an_sdxl_dreambooth_identity_swaps_both_text_encoders_into_a_fresh_pipeline(home, tiny_sdxl, xl_mia):
    settings = QUICK | {"train_text_encoder": True, "learning_rate": 1e-3}
    metadata = train_identity(home, "Mia", "dreambooth", overrides=settings, show_progress=False)
    assert metadata.files == ["unet", "text_encoder", "text_encoder_2"]
    pipeline = fresh_sdxl(tiny_sdxl)
    base = draw(pipeline, xl_mia.instance_prompt)
    load_identity(pipeline, registry.character_dir(home, "Mia") / "identity", "mia")
    assert type(pipeline.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert not np.allclose(draw(pipeline, xl_mia.instance_prompt), base, atol=1e-3)


@pytest.mark.parametrize("method", ["textual-inversion", "hypernetwork", "pivotal"])
def test_methods_not_built_for_sdxl_are_refused_before_any_weights_load(home, xl_mia, method, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a pipeline was loaded")

    monkeypatch.setattr("storybook.training.loop.load_pipeline", no_loading)
    with pytest.raises(TrainingError, match="SDXL model: use --method lora or dreambooth"):
        train_identity(home, "Mia", method, overrides=QUICK, show_progress=False)


def test_sdxl_time_ids_say_each_photos_own_size_and_the_class_images(home, tiny_sdxl, tmp_path, monkeypatch):
    from storybook.sample_photos import draw_toddler
    from storybook.training import batches as batches_module

    photos = []
    for seed, side in enumerate((320, 320, 260, 320, 260)):  # crops smaller than SDXL's 1024 px, of two sizes
        photos.append(tmp_path / f"photo-{seed}.png")
        draw_toddler(seed, side).save(photos[-1])
    update_config(home, {"model": str(tiny_sdxl)})
    registry.add_character(home, "Mia", photos, load_tokenizer(str(tiny_sdxl), home))
    seen = {}
    real_photos, real_draw = batches_module.Batches.photo_conditioning, batches_module.Batches.draw

    def photo_conditioning(self, indices):
        conditioning = real_photos(self, indices)
        seen.setdefault("photos", conditioning.added["time_ids"])
        return conditioning

    def draw(self, generator):
        latents, conditioning = real_draw(self, generator)
        seen.setdefault("batch", conditioning.added["time_ids"])
        return latents, conditioning

    monkeypatch.setattr(batches_module.Batches, "photo_conditioning", photo_conditioning)
    monkeypatch.setattr(batches_module.Batches, "draw", draw)
    settings = QUICK | {"steps": 1, "batch_size": 2, "num_class_images": 1}
    metadata = train_identity(home, "Mia", "lora", overrides=settings, show_progress=False, sample_grids=False)
    size = metadata.resolution  # what every picture is resized to
    assert seen["photos"].tolist() == [[side, side, 0, 0, size, size] for side in (320, 320, 260, 320, 260)]
    photo_rows, class_rows = seen["batch"][:2].tolist(), seen["batch"][2:].tolist()  # photos, then class images
    assert all(row[:2] in ([320, 320], [260, 260]) and row[2:] == [0, 0, size, size] for row in photo_rows)
    assert class_rows == [[size, size, 0, 0, size, size]] * 2  # drawn by the model at its own size
