"""Image-prompt identities (IP-Adapter) on the tiny model with a random-weight adapter of the real file layout."""

import os
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from storybook import registry
from storybook.book import RenderSettings, load_book, save_book
from storybook.cli import app
from storybook.config import AdapterSource
from storybook.errors import ModelError
from storybook.identities.adapter_format import adapter_weights
from storybook.identities.image_prompt import load_image_embeds, read_image_prompt
from storybook.models import TINY_MODEL_FOLDER
from storybook.registry import identity_hash
from storybook.render.image_prompts import region_masks
from storybook.render.pages import render_book, with_settings
from storybook.render.renderer import ImageJob, Renderer
from storybook.story.stage import StoryRequest, write_story
from storybook.tiny_model import build_tokenizer
from storybook.training.personalize import build_identity

SETTINGS = RenderSettings(steps=6)


def register(home, photos, name="Mia"):
    return registry.add_character(home, name, photos, build_tokenizer(), description="curly red hair")


def pixels(picture) -> np.ndarray:
    return np.asarray(picture, dtype=np.int16)


def test_an_image_prompt_needs_no_training_and_changes_only_the_pages_with_its_character(
    home, sample_photos, tiny_ip_adapter
):
    register(home, sample_photos)
    metadata, record = build_identity(home, "Mia", "ip-adapter", adapter=tiny_ip_adapter, image_scale=1.0)
    folder = registry.identity_folder(home, "mia")
    assert metadata is None and record == read_image_prompt(folder)
    assert registry.is_trained(home, "mia") and not (folder / "identity.json").exists()
    assert record.wall_time_s < 10 and record.adapter == tiny_ip_adapter
    embeds = load_image_embeds(folder)
    assert embeds["positive"].shape == (1, 32) and not embeds["negative"].any()  # mean of 5 photos; CFG's zeros

    renderer = Renderer(home, "tiny")
    renderer.load_identities(["mia"])
    without = renderer.draw([ImageJob("a toddler at the beach", "", 3, ())], SETTINGS, 6)[0]
    with_mia = renderer.draw([ImageJob("a toddler at the beach", "", 3, ("mia",))], SETTINGS, 6)[0]
    again = renderer.draw([ImageJob("a toddler at the beach", "", 3, ("mia",))], SETTINGS, 6)[0]
    assert np.abs(pixels(with_mia) - pixels(without)).mean() > 2  # the image prompt draws
    assert (pixels(with_mia) == pixels(again)).all()  # the same seed, the same picture

    # A page without her is exactly what the base model draws with no adapter loaded at all.
    plain = StableDiffusionPipeline.from_pretrained(TINY_MODEL_FOLDER, safety_checker=None)
    plain.scheduler = renderer.pipeline.scheduler
    reference = plain(
        "a toddler at the beach",
        negative_prompt="",
        num_inference_steps=6,
        guidance_scale=SETTINGS.guidance,
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]
    assert (pixels(reference) == pixels(without)).all()


def test_the_adapter_file_round_trips_through_diffusers_load_ip_adapter(home, tiny_ip_adapter):
    pipeline = StableDiffusionPipeline.from_pretrained(TINY_MODEL_FOLDER, safety_checker=None)
    pipeline.load_ip_adapter(tiny_ip_adapter.source, "models", "ip-adapter_sd15.safetensors", "image_encoder")
    written = load_file(f"{tiny_ip_adapter.source}/{tiny_ip_adapter.weight_name}")
    loaded = adapter_weights(pipeline.unet)
    assert loaded.keys() == written.keys()
    assert all(torch.equal(loaded[key], written[key].float()) for key in written)
    assert pipeline.image_encoder.config.image_size == 32


def test_scale_and_embedding_are_part_of_each_pictures_cache_key(home, sample_photos, tiny_ip_adapter):
    register(home, sample_photos)
    build_identity(home, "Mia", "ip-adapter", adapter=tiny_ip_adapter)
    folder, book = write_story(home, StoryRequest(child="Mia", theme="a day at the beach", pages=8, seed=2), "offline")
    save_book(folder, with_settings(book, {"steps": 4}))
    report, renderer = render_book(home, folder)
    first = load_book(folder).pages[0].image
    save_book(folder, with_settings(load_book(folder), {"image_scales": {"Mia": 0.3}}))
    report, renderer = render_book(home, folder, renderer=renderer)
    assert report.drawn == 9 and load_book(folder).pages[0].image != first  # every picture shows Mia
    hashed = identity_hash(home, "mia")
    build_identity(home, "Mia", "ip-adapter", adapter=tiny_ip_adapter, image_scale=0.5)  # built again
    assert identity_hash(home, "mia") != hashed
    report, _ = render_book(home, folder, renderer=renderer)
    assert report.drawn == 9


def test_two_characters_each_draw_in_their_own_region(home, tmp_path, tiny_ip_adapter):
    from storybook.lab import world

    register(home, world.write_photos(tmp_path / "mia", world.DEMO_TODDLER), "Mia")
    rex = world.Toddler("black", "short", "dark", "blue", "cap", "black", "stripes")
    register(home, world.write_photos(tmp_path / "rex", rex), "Rex")
    for name in ("Mia", "Rex"):
        build_identity(home, name, "ip-adapter", adapter=tiny_ip_adapter, image_scale=1.0)
    masks = region_masks(2, 32, 32)[0]
    assert masks[0, :, :16].all() and not masks[0, :, 16:].any()
    assert masks[1, :, 16:].all() and not masks[1, :, :16].any()
    renderer = Renderer(home, "tiny")
    renderer.load_identities(["mia", "rex"])
    inputs = renderer.image_prompts.inputs(("mia", "rex"), 2, SETTINGS, renderer.size(SETTINGS))
    assert inputs["ip_adapter_image_embeds"][0].shape == (4, 2, 32)  # (CFG halves x 2 pictures, 2 images, width)
    assert inputs["cross_attention_kwargs"]["ip_adapter_masks"][0].shape == (1, 2, 16, 16)  # at the latents' size
    both = renderer.draw([ImageJob("two toddlers", "", 5, ("mia", "rex"))], SETTINGS, 6)[0]
    swapped = renderer.draw([ImageJob("two toddlers", "", 5, ("rex", "mia"))], SETTINGS, 6)[0]
    # Without masks the two images' tokens are one set (attention ignores their order), so the same picture; with
    # masks, who stands where follows the page's order.
    assert np.abs(pixels(both) - pixels(swapped)).mean() > 0.1


def test_lora_and_image_prompt_together(home, sample_photos, tiny_ip_adapter):
    register(home, sample_photos)
    quick = {"steps": 4, "num_class_images": 2, "class_image_steps": 2}
    metadata, record = build_identity(
        home, "Mia", "lora+ip-adapter", overrides=quick, adapter=tiny_ip_adapter, show_progress=False
    )
    folder = registry.identity_folder(home, "mia")
    assert metadata.method == "lora" and record.scale == 0.6  # the default strength of a user's adapter
    assert (folder / "pytorch_lora_weights.safetensors").is_file() and (folder / "image_prompt.json").is_file()
    renderer = Renderer(home, "tiny")
    renderer.load_identities(["mia"])
    assert renderer.adapters.keys() == {"mia"} and renderer.image_prompts.loaded.keys() == {"mia"}
    # Built again as an image prompt alone, the LoRA is gone: the identity is what the last build made.
    build_identity(home, "Mia", "ip-adapter", adapter=tiny_ip_adapter)
    assert not (folder / "pytorch_lora_weights.safetensors").exists()
    renderer.load_identities(["mia"])  # a renderer kept loaded (the app's) drops her old LoRA
    assert renderer.adapters == {} and renderer.image_prompts.loaded.keys() == {"mia"}
    # And built again as a LoRA alone, her image prompt goes: her pages draw as a plain LoRA page does.
    build_identity(home, "Mia", "lora", overrides=quick, show_progress=False)
    assert not (folder / "image_prompt.json").exists()
    renderer.load_identities(["mia"])
    assert renderer.adapters.keys() == {"mia"} and renderer.image_prompts.loaded == {}
    job = ImageJob("a toddler at the beach", "", 3, ("mia",))
    fresh = Renderer(home, "tiny")
    fresh.load_identities(["mia"])
    assert fresh.image_prompts.adapter is None  # never loaded an adapter
    assert np.array_equal(pixels(renderer.draw([job], SETTINGS, 6)[0]), pixels(fresh.draw([job], SETTINGS, 6)[0]))


def test_pivotal_tuning_and_image_prompt_together(home, sample_photos, tiny_ip_adapter):
    character = register(home, sample_photos)
    quick = {"steps": 4, "num_class_images": 2, "class_image_steps": 2}
    metadata, record = build_identity(
        home, "Mia", "pivotal+ip-adapter", overrides=quick, adapter=tiny_ip_adapter, show_progress=False
    )
    assert metadata.method == "pivotal" and record.character == "mia"
    renderer = Renderer(home, "tiny")
    renderer.load_identities(["mia"])
    assert renderer.adapters.keys() == {"mia"} and renderer.image_prompts.loaded.keys() == {"mia"}
    assert renderer.pipeline.tokenizer.tokenize(character.token) == [character.token]  # the learned word is in
    job = ImageJob(f"{character.token} toddler at the beach", "", 3, ("mia",))
    with_photos = renderer.draw([job], SETTINGS, 6)[0]
    without = renderer.draw([job], SETTINGS.model_copy(update={"image_scales": {"mia": 0.0}}), 6)[0]
    assert np.abs(pixels(with_photos) - pixels(without)).mean() > 0.1  # the image prompt draws too


def test_an_adapter_that_is_missing_changed_or_for_another_model_is_refused_with_what_to_do(
    home, sample_photos, tiny_ip_adapter, tmp_path
):
    register(home, sample_photos)
    with pytest.raises(ModelError, match="has no IP-Adapter of its own"):
        build_identity(home, "Mia", "ip-adapter")
    missing = AdapterSource(source="h94/IP-Adapter", weight_name="models/ip-adapter_sd15.safetensors")
    with pytest.raises(ModelError, match="not in the Hugging Face cache.*hf download h94/IP-Adapter"):
        build_identity(home, "Mia", "lora+ip-adapter", adapter=missing)  # said before any training
    assert not registry.is_trained(home, "mia") and not (home / "cache" / "class-images").exists()
    with pytest.raises(ValueError, match="inside the adapter's folder"):
        AdapterSource(source=tiny_ip_adapter.source, weight_name="../../characters/x/photos/00.jpg")

    copy = tmp_path / "my-adapter"
    shutil.copytree(tiny_ip_adapter.source, copy)
    relative = os.path.relpath(copy)
    adapter = AdapterSource(
        source=relative, weight_name=tiny_ip_adapter.weight_name, image_encoder="models/image_encoder"
    )
    assert adapter.source == str(copy.resolve())  # kept absolute: found from any working directory
    build_identity(home, "Mia", "ip-adapter", adapter=adapter)
    with pytest.raises(ModelError, match="does not load into storybook-mini"):
        Renderer(home, "storybook-mini").load_identities(["mia"])
    weights = load_file(copy / adapter.weight_name)
    save_file({key: value + 1 for key, value in weights.items()}, copy / adapter.weight_name)
    renderer = Renderer(home, "tiny")
    with pytest.raises(ModelError, match="changed since mia's image prompt was built"):
        renderer.load_identities(["mia"])
    assert renderer.image_prompts.adapter is None  # refused before anything loaded: its pages still draw
    renderer.draw([ImageJob("a toddler", "", 1, ())], SETTINGS, 2)


def poison(weights_file) -> None:
    """Put NaN into the first floating-point tensor of a safetensors file."""
    weights = load_file(weights_file)
    weights[next(key for key, value in weights.items() if value.is_floating_point())].view(-1)[0] = float("nan")
    save_file(weights, weights_file, metadata={"format": "pt"})


def test_nan_weights_in_an_image_encoder_or_an_ip_adapter_are_refused_by_name(
    home, sample_photos, tiny_ip_adapter, tmp_path
):
    register(home, sample_photos)
    copy = tmp_path / "my-adapter"
    shutil.copytree(tiny_ip_adapter.source, copy)
    adapter = tiny_ip_adapter.model_copy(update={"source": str(copy)})
    poison(copy / "models" / "image_encoder" / "model.safetensors")
    with pytest.raises(ModelError, match="image encoder .*image_encoder is damaged: its weights hold NaN"):
        build_identity(home, "Mia", "ip-adapter", adapter=adapter)
    assert not registry.is_trained(home, "mia")

    shutil.copy(
        os.path.join(tiny_ip_adapter.source, "models", "image_encoder", "model.safetensors"),
        copy / "models" / "image_encoder" / "model.safetensors",
    )
    build_identity(home, "Mia", "ip-adapter", adapter=adapter)
    poison(copy / adapter.weight_name)
    with pytest.raises(ModelError, match=r"IP-Adapter .*my-adapter \(models/ip-adapter_sd15.safetensors\) is damaged"):
        Renderer(home, "tiny").load_identities(["mia"])


def test_the_cli_builds_an_image_prompt_and_renders_with_its_scale(home, sample_photos, tiny_ip_adapter):
    runner = CliRunner()
    register(home, sample_photos)
    args = ["--home", str(home), "character", "train", "Mia", "--method", "ip-adapter", "--model", "tiny"]
    args += ["--ip-adapter", tiny_ip_adapter.source, "--ip-adapter-weight", tiny_ip_adapter.weight_name]
    args += ["--image-encoder", tiny_ip_adapter.image_encoder]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Image prompt of mia from 5 photos" in result.output
    folder, _ = write_story(home, StoryRequest(child="Mia", theme="a day at the beach", pages=8), "offline")
    result = runner.invoke(
        app, ["--home", str(home), "render", str(folder), "--steps", "3", "--image-scale", "Mia=0.4"]
    )
    assert result.exit_code == 0, result.output
    assert load_book(folder).render.image_scales == {"mia": 0.4}


def test_a_plus_adapter_takes_the_patch_tokens_of_the_most_typical_photo_not_their_mean(
    sample_photos, tiny_ip_adapter, monkeypatch
):
    from transformers import CLIPVisionModelWithProjection

    from storybook.identities.image_prompt import adapter_files, embed_photos, image_processor, most_typical

    monkeypatch.setattr("storybook.identities.image_prompt.is_plus_adapter", lambda weights: True)
    embeds = embed_photos(tiny_ip_adapter, sample_photos, torch.device("cpu"), torch.float32)
    encoder = CLIPVisionModelWithProjection.from_pretrained(adapter_files(tiny_ip_adapter)[1]).eval()
    pictures = [Image.open(path).convert("RGB") for path in sample_photos]
    pixels = image_processor(encoder.config.image_size)(pictures, return_tensors="pt").pixel_values
    with torch.no_grad():
        output = encoder(pixels, output_hidden_states=True)
    tokens = output.hidden_states[-2]  # (photos, patches + 1, width)
    torch.testing.assert_close(embeds["positive"], tokens[most_typical(output.image_embeds)][None])
    assert not torch.allclose(embeds["positive"], tokens.mean(0, keepdim=True), atol=1e-3)
    assert embeds["negative"].shape == embeds["positive"].shape


def test_the_image_encoder_runs_in_the_data_roots_dtype_and_the_embedding_is_kept_in_fp32(
    home, sample_photos, tiny_ip_adapter
):
    from storybook.identities.image_prompt import embed_photos
    from storybook.render.configure import update_config

    register(home, sample_photos)
    update_config(home, {"dtype": "bf16"})  # what a GPU's fp16 would be; bf16 on this CPU
    build_identity(home, "Mia", "ip-adapter", adapter=tiny_ip_adapter)
    saved = load_image_embeds(registry.identity_folder(home, "mia"))["positive"]
    photos = registry.prepared_photo_paths(home, registry.load_character(home, "Mia"))
    in_fp32 = embed_photos(tiny_ip_adapter, photos, torch.device("cpu"), torch.float32)["positive"]
    assert saved.dtype == torch.float32
    assert not torch.equal(saved, in_fp32) and torch.allclose(saved, in_fp32, atol=0.1, rtol=0.05)
