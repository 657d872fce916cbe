"""Identity-training settings, with defaults from published practice per method, scaled down for tiny models."""

from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from storybook.errors import TrainingError

Method = Literal["lora", "dreambooth"]
TINY_MODEL_PARAMETERS = 3_000_000  # UNets below this (the tiny model, 1.4 M) get the tiny model's defaults
SMALL_MODEL_PARAMETERS = 50_000_000  # UNets below this (storybook-mini, 5.8 M) get the ones measured on storybook-mini


class TrainingConfig(BaseModel):
    """Everything that decides the trained weights; saved with each checkpoint and identity."""

    method: Method
    steps: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    rank: int = Field(4, gt=0)  # LoRA only; alpha = rank, as in diffusers' train_dreambooth_lora.py
    lora_convolutions: bool = False  # LoRA also on the UNet's ResNet convolutions and projections (LoCon)
    batch_size: int = Field(1, gt=0)
    grad_accum: int = Field(1, gt=0)
    prior_preservation: bool = True
    prior_loss_weight: float = 1.0
    num_class_images: int = Field(100, ge=0)
    class_image_steps: int = Field(25, gt=0)
    train_text_encoder: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    snr_gamma: float | None = None  # 5.0 is kohya's and the Min-SNR paper's choice
    offset_noise: float = 0.0  # ~0.1 in kohya's sd-scripts
    seed: int = 0
    checkpoint_every: int = Field(100, gt=0)
    cache_latents: bool = True


# Published practice: diffusers' train_dreambooth_lora.py README (lr 1e-4, ~500-1000 steps) and the HF DreamBooth
# blog for faces (lr 1e-6..2e-6, 800-1200 steps, 100-200 class images, prior weight 1.0).
PUBLISHED_DEFAULTS = {
    "lora": {"steps": 800, "learning_rate": 1e-4, "rank": 8, "num_class_images": 100, "checkpoint_every": 100},
    "dreambooth": {"steps": 1000, "learning_rate": 2e-6, "num_class_images": 200, "checkpoint_every": 200},
}
# The tiny model learns in a minute on a CPU: higher rates, bigger batches, a few cheap class images.
TINY_MODEL_DEFAULTS = {
    "lora": {
        "steps": 60,
        "learning_rate": 5e-3,
        "rank": 4,
        "batch_size": 4,
        "num_class_images": 8,
        "class_image_steps": 10,
        "checkpoint_every": 20,
    },
    "dreambooth": {
        "steps": 60,
        "learning_rate": 2e-4,
        "batch_size": 4,
        "num_class_images": 8,
        "class_image_steps": 10,
        "checkpoint_every": 20,
    },
}
# Measured with the consistency lab on storybook-mini (README, "Consistency lab"): the tiny model's LoRA rate spoils
# its pictures, a full fine-tune at 2e-4 with 24 class images drifts as much with the prior as without (1e-4 with
# 100 class images holds the class), and a LoRA on attention alone (a tenth of this UNet's weights) learns nothing
# of the photos, so it also adapts the convolutions.
SMALL_MODEL_DEFAULTS = {
    "lora": {
        "steps": 600,
        "learning_rate": 5e-4,
        "rank": 8,
        "lora_convolutions": True,
        "batch_size": 4,
        "num_class_images": 24,
        "class_image_steps": 20,
        "checkpoint_every": 100,
    },
    "dreambooth": {
        "steps": 300,
        "learning_rate": 1e-4,
        "batch_size": 4,
        "num_class_images": 100,
        "class_image_steps": 20,
        "checkpoint_every": 100,
    },
}


def default_config(method: Method, unet_parameters: int) -> TrainingConfig:
    """The default settings for `method`, by the UNet's size: the tiny model's (under TINY_MODEL_PARAMETERS),
    storybook-mini's (under SMALL_MODEL_PARAMETERS) or published ones for real models."""
    if unet_parameters < TINY_MODEL_PARAMETERS:
        defaults = TINY_MODEL_DEFAULTS
    elif unet_parameters < SMALL_MODEL_PARAMETERS:
        defaults = SMALL_MODEL_DEFAULTS
    else:
        defaults = PUBLISHED_DEFAULTS
    return TrainingConfig(method=method, **defaults[method])


def resolve_config(method: Method, unet_parameters: int, overrides: dict | None = None) -> TrainingConfig:
    """`default_config` with `overrides` (e.g. {"steps": 200}) applied and checked.

    Raises TrainingError naming the bad setting (e.g. steps=0).
    """
    settings = default_config(method, unet_parameters).model_dump() | (overrides or {})
    try:
        return TrainingConfig.model_validate(settings)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise TrainingError(f"Invalid training settings ({problems}).") from None
