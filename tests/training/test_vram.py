"""The memory plan's estimates against published measurements (within 25%), and the public models' shapes counted
again from their configs."""

import json
import sys
from pathlib import Path

import pytest

from storybook.identities import resolve_config
from storybook.training.vram import (
    GIB,
    REFERENCE_SHAPES,
    SD15_SHAPE,
    SDXL_SHAPE,
    model_shape,
    render_need,
    training_need,
)

NO_PRIOR = {"prior_preservation": False, "num_class_images": 0}
# ShivamShrirao/diffusers examples/dreambooth/README.md, "Tested on Tesla T4 GPU": SD 1.x DreamBooth at 512 px,
# latents and text embeddings cached; (settings, GiB of VRAM).
T4_DREAMBOOTH = [
    ({"mixed_precision": "fp16", "gradient_checkpointing": True, "optimizer": "adamw-8bit"}, 9.92),
    ({"mixed_precision": "no", "gradient_checkpointing": True, "optimizer": "adamw-8bit"}, 10.08),
    ({"mixed_precision": "fp16", "gradient_checkpointing": True, "optimizer": "adamw-8bit", "batch_size": 2}, 10.4),
    ({"mixed_precision": "fp16", "gradient_checkpointing": False, "optimizer": "adamw-8bit"}, 11.17),
    ({"mixed_precision": "no", "gradient_checkpointing": False, "optimizer": "adamw-8bit"}, 11.17),
    ({"mixed_precision": "fp16", "gradient_checkpointing": True, "optimizer": "adamw-8bit", "grad_accum": 2}, 11.56),
    ({"mixed_precision": "fp16", "gradient_checkpointing": False, "optimizer": "adamw-8bit", "batch_size": 2}, 13.67),
    ({"mixed_precision": "fp16", "gradient_checkpointing": False, "optimizer": "adamw-8bit", "grad_accum": 2}, 13.7),
    ({"mixed_precision": "fp16", "gradient_checkpointing": True, "optimizer": "adamw"}, 15.79),
    ({"mixed_precision": "fp16", "gradient_checkpointing": False, "optimizer": "adamw"}, 17.7),  # "else 17.7 GB"
]
FUSED = {"gradient_checkpointing": True, "optimizer": "adafactor", "fused_backward": True, "mixed_precision": "bf16"}


def estimate(family: str, method: str, settings: dict) -> float:
    """The plan's GiB on the card for `method` with `settings` on the public `family` model (no sample grids: the
    published runs drew none)."""
    shape = REFERENCE_SHAPES[family]
    config = resolve_config(method, shape.unet, NO_PRIOR | settings, family)
    return training_need(shape, config, sample_grids=False).on_card / GIB


@pytest.mark.parametrize("settings, published", T4_DREAMBOOTH)
def test_sd15_dreambooth_estimates_are_within_a_quarter_of_the_t4_table(settings, published):
    assert estimate("sd", "dreambooth", settings) == pytest.approx(published, rel=0.25)


@pytest.mark.parametrize(
    "settings, published",
    [  # kohya-ss/sd-scripts pull request 1259: SDXL full fine-tune, 1024 px, batch 1, fused Adafactor
        (FUSED | {"full_bf16": True}, 10.0),
        (FUSED, 16.4),
    ],
)
def test_sdxl_fine_tune_estimates_are_within_a_quarter_of_kohyas_fused_adafactor(settings, published):
    assert estimate("sdxl", "dreambooth", settings) == pytest.approx(published, rel=0.25)


def test_sdxl_lora_estimate_is_within_a_quarter_of_kohyas_8_to_10_gb():
    # kohya-ss/sd-scripts README, "Tips for SDXL training": 8 GB (10 GB recommended) with checkpointing, cached
    # latents and text encoder outputs, an 8-bit optimiser, rank 4-8.
    settings = {"mixed_precision": "bf16", "gradient_checkpointing": True, "optimizer": "adamw-8bit", "grad_accum": 1}
    for rank in (4, 8):
        assert estimate("sdxl", "lora", settings | {"rank": rank}) == pytest.approx(8.0, rel=0.25)


def test_full_sdxl_dreambooth_in_fp32_with_8_bit_adam_cannot_fit_24_gb():
    # The arithmetic: ~26 GB of weights, gradients and 8-bit Adam state before activations.
    settings = {"mixed_precision": "bf16", "gradient_checkpointing": True, "optimizer": "adamw-8bit"}
    assert estimate("sdxl", "dreambooth", settings) > 24


def test_drawing_an_sdxl_page_needs_more_than_an_sd15_page_and_batches_cost_activations_only():
    sd, sdxl = render_need(SD15_SHAPE, 2), render_need(SDXL_SHAPE, 2)
    assert sd.weights < sdxl.weights and sd.on_card < 6 * GIB < sdxl.on_card < 16 * GIB
    assert render_need(SDXL_SHAPE, 2, batch=4).weights == sdxl.weights
    assert render_need(SDXL_SHAPE, 2, batch=4).activations > sdxl.activations


def configs_only(folder: Path, pipeline_class: str, unet, vae, text_encoders: dict) -> Path:
    """A pipeline folder holding only the configs of `unet`, `vae` and `text_encoders` (name -> model): what
    `model_shape` reads."""
    folder.mkdir()
    index = {"_class_name": pipeline_class, "unet": ["diffusers", "UNet2DConditionModel"]}
    unet.save_config(folder / "unet")
    vae.save_config(folder / "vae")
    for name, encoder in text_encoders.items():
        encoder.config.save_pretrained(folder / name)
        index[name] = ["transformers", type(encoder).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_the_reference_shapes_are_the_public_architectures_counted_again(tmp_path):
    """SD 1.5 and SDXL as bench/ builds them (their public configs), counted on the meta device from configs alone."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    from gpu import sdxl_text_configs, sdxl_unet
    from train import sd15_text_config, sd15_unet, sd_shaped_vae

    from storybook.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    with init_empty_weights():
        sd = configs_only(
            tmp_path / "sd15",
            "StableDiffusionPipeline",
            sd15_unet(),
            sd_shaped_vae(512, 0.18215),
            {"text_encoder": CLIPTextModel(sd15_text_config(tokenizer))},
        )
        first, second = sdxl_text_configs(tokenizer)
        sdxl = configs_only(
            tmp_path / "sdxl",
            "StableDiffusionXLPipeline",
            sdxl_unet(),
            sd_shaped_vae(1024, 0.13025),
            {"text_encoder": CLIPTextModel(first), "text_encoder_2": CLIPTextModelWithProjection(second)},
        )
    assert model_shape(str(sd)) == SD15_SHAPE
    assert model_shape(str(sdxl)) == SDXL_SHAPE


@pytest.mark.parametrize(
    "family, method, settings, card",
    [  # ../shared/FACTS.md: the cards published recipes are said to fit (upper bounds, not measurements)
        (
            "sd",
            "dreambooth",
            {"mixed_precision": "fp16", "gradient_checkpointing": True, "optimizer": "adamw-8bit"},
            16,
        ),
        (
            "sd",
            "dreambooth",
            {"mixed_precision": "fp16", "gradient_checkpointing": True, "optimizer": "adamw-8bit"},
            12,
        ),
        (
            "sd",
            "dreambooth",
            {
                "mixed_precision": "fp16",
                "gradient_checkpointing": True,
                "optimizer": "adamw-8bit",
                "train_text_encoder": True,
            },
            24,
        ),
        ("sd", "hypernetwork", {"mixed_precision": "fp16"}, 8),  # the seed paper's 8 GB
        ("sd", "dreambooth", {"mixed_precision": "no", "gradient_checkpointing": False, "optimizer": "adamw"}, 24),
        ("sdxl", "lora", {"mixed_precision": "fp16", "gradient_checkpointing": True, "optimizer": "adamw-8bit"}, 16),
    ],
)
def test_the_plan_fits_the_cards_published_recipes_are_said_to_fit(family, method, settings, card):
    # diffusers' DreamBooth README (16 GB with checkpointing and 8-bit Adam, 12 GB with memory-efficient attention,
    # 24 GB training the text encoder too), the seed paper (hypernetwork 8 GB, DreamBooth 24 GB), diffusers'
    # README_sdxl (an SDXL LoRA "with less than 16GB of VRAM").
    assert estimate(family, method, settings) <= card
