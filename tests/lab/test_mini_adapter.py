"""storybook-mini's IP-Adapter: the committed files load through diffusers' own call and draw the photos' child."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline

from storybook.config import MINI_ADAPTER_FILE
from storybook.errors import LabError
from storybook.identities.adapter_format import adapter_weights
from storybook.identities.image_prompt import MINI_ADAPTER_FOLDER, MINI_ADAPTER_SCALE, image_processor
from storybook.lab import world
from storybook.lab.evaluator import load_evaluator
from storybook.lab.mini_adapter import (
    ENCODER_SIZE,
    IMAGE_DROP_SHARE,
    IMAGE_EMBED_DIM,
    build_image_encoder,
    encode_pairs,
    image_condition,
    train_mini_adapter,
)
from storybook.lab.mini_model import MiniRecipe, build_vae, check_recipe
from storybook.models import MINI_MODEL, MINI_MODEL_FOLDER, load_pipeline

FIELDS = [*world.ATTRIBUTES, *world.SIGNATURE]  # the seven identity fields
MIN_GAIN = 0.1  # of the identity fields read right over the same pages without the image prompt (measured 0.55 vs 0.30)


def test_the_committed_adapter_is_small_and_loads_through_load_ip_adapter(tmp_path):
    weights = [*MINI_MODEL_FOLDER.rglob("*"), *MINI_ADAPTER_FOLDER.rglob("*")]
    assert sum(path.stat().st_size for path in weights if path.is_file()) < 30 * 2**20
    pipeline, _ = load_pipeline(MINI_MODEL, tmp_path)
    pipeline.load_ip_adapter(str(MINI_ADAPTER_FOLDER), "", MINI_ADAPTER_FILE, "image_encoder")
    assert pipeline.image_encoder.config.projection_dim == IMAGE_EMBED_DIM
    assert len(adapter_weights(pipeline.unet)) == 4 + 2 * 7  # projection, and k/v for each cross-attention layer


@pytest.mark.slow
def test_an_image_prompt_on_storybook_mini_draws_the_childs_look(tmp_path):
    from storybook.lab.benchmark import benchmark_toddlers

    pipeline, _ = load_pipeline(MINI_MODEL, tmp_path)
    pipeline.load_ip_adapter(str(MINI_ADAPTER_FOLDER), "", MINI_ADAPTER_FILE, "image_encoder")
    toddler = benchmark_toddlers(1)[0]  # held out: never drawn while training
    photos = [world.draw_scene(world.photo_scene(toddler, index), 256) for index in range(5)]
    with torch.no_grad():
        pixels = image_processor(ENCODER_SIZE)(photos, return_tensors="pt").pixel_values
        embedding = pipeline.image_encoder(pixels).image_embeds.mean(0, keepdim=True)
    embeds = torch.stack([torch.zeros_like(embedding), embedding]).repeat_interleave(8, dim=0)  # (CFG x 8, 1, 64)
    prompts = world.page_prompts("a toddler")[:8]  # the class noun alone: the look must come from the photos

    def fields_right(scale: float) -> float:
        pipeline.set_ip_adapter_scale(scale)
        generators = [torch.Generator().manual_seed(seed) for seed in range(8)]
        pictures = pipeline(prompts, num_inference_steps=20, generator=generators, ip_adapter_image_embeds=[embeds])
        readings = load_evaluator().read(pictures.images)
        return sum(reading[field] == getattr(toddler, field) for reading in readings for field in FIELDS) / 56

    with_prompt, without = fields_right(MINI_ADAPTER_SCALE), fields_right(0.0)
    assert with_prompt >= without + MIN_GAIN, (with_prompt, without)


def test_the_adapter_trains_on_story_scenes_weighted_where_the_toddler_and_its_hat_are():
    latents, coverage, embeddings, scenes = encode_pairs(build_vae(), build_image_encoder(), 6, random.Random(0))
    assert latents.shape == (6, 4, 16, 16) and coverage.shape == (6, 2, 16, 16) and embeddings.shape == (6, 64)
    for scene, covered in zip(scenes, coverage, strict=True):
        assert world.STORY_HEIGHTS[0] <= scene.height <= world.STORY_HEIGHTS[1]  # the toddler drawn large
        for channel, mask_of in enumerate((world.toddler_mask, world.hat_mask)):  # the loss's weights
            mask = torch.from_numpy(np.asarray(mask_of(scene, 64), dtype=np.float32) / 255)
            assert torch.allclose(covered[channel], F.avg_pool2d(mask[None], 4)[0], atol=1e-6)


def test_adapter_training_refuses_a_work_folder_of_another_recipe_before_training(tmp_path):
    old, out = tmp_path / "v3-run", (tmp_path / "out", tmp_path / "adapter")
    old.mkdir()
    (old / "adapter-checkpoint.pt").write_bytes(b"a run from before recipes were recorded")
    with pytest.raises(LabError, match="before the adapter stage took v4's recipe"):
        train_mini_adapter(*out, old)
    other = tmp_path / "other"
    check_recipe(other / "recipe.json", MiniRecipe(part_weight=0.0))
    with pytest.raises(LabError, match="holds a run with another recipe"):
        train_mini_adapter(*out, other)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other", "v3-run"]  # nothing trained or written


def test_adapter_training_resumes_and_writes_loadable_files(tmp_path):
    messages = []
    options = {"encoder_steps": 40, "dataset_size": 64, "batch_size": 4, "checkpoint_every": 2}
    out, adapter = tmp_path / "out", tmp_path / "adapter"
    train_mini_adapter(out, adapter, tmp_path / "work", unet_steps=2, progress=messages.append, **options)
    train_mini_adapter(out, adapter, tmp_path / "work", unet_steps=4, progress=messages.append, **options)
    assert "resumed at step 2" in messages
    assert sum("image encoder trained" in message for message in messages) == 1  # the encoder is trained once
    assert not any("_name_or_path" in path.read_text() for path in out.rglob("*.json"))  # no trainer's folder in it
    pipeline = DiffusionPipeline.from_pretrained(out, dtype=torch.float32)
    pipeline.load_ip_adapter(str(adapter), "", MINI_ADAPTER_FILE, "image_encoder")
    embeds = torch.zeros(2, 1, IMAGE_EMBED_DIM)
    picture = pipeline("a toddler", num_inference_steps=2, output_type="np", ip_adapter_image_embeds=[embeds])
    assert picture.images.shape == (1, 64, 64, 3)


def test_a_dropped_image_is_trained_as_both_ways_pages_draw_without_one(tmp_path):
    embedding_kept, branch_on = image_condition(torch.linspace(0, 1, 10_001)[:-1])
    assert embedding_kept.mean().item() == pytest.approx(1 - IMAGE_DROP_SHARE / 2, abs=1e-3)
    assert branch_on.mean().item() == pytest.approx(1 - IMAGE_DROP_SHARE / 2, abs=1e-3)
    assert not ((embedding_kept == 0) & (branch_on == 0)).any()  # each dropped sample one way, never both

    # A branch-off sample (mask 0) is trained exactly as a page without an image prompt is drawn (scale 0).
    pipeline, _ = load_pipeline(MINI_MODEL, tmp_path)
    pipeline.load_ip_adapter(str(MINI_ADAPTER_FOLDER), "", MINI_ADAPTER_FILE, "image_encoder")
    unet, generator = pipeline.unet, torch.Generator().manual_seed(0)
    latents, text = torch.randn(2, 4, 16, 16, generator=generator), torch.randn(2, 77, 64, generator=generator)
    image = {"image_embeds": [torch.randn(2, 1, IMAGE_EMBED_DIM, generator=generator)]}
    branch_off = {"ip_adapter_masks": [torch.zeros(2, 1, 16, 16)]}

    def predict(**options):
        with torch.no_grad():
            return unet(latents, torch.tensor([500, 500]), text, added_cond_kwargs=image, **options).sample

    masked, with_image = predict(cross_attention_kwargs=branch_off), predict()
    pipeline.set_ip_adapter_scale(0.0)
    assert torch.equal(masked, predict())
    assert not torch.allclose(masked, with_image)
