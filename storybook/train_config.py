"""Identity-training settings, with defaults from published practice per method, scaled down for tiny models."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from storybook.errors import TrainingError, describe_problems

Method = Literal["lora", "dreambooth"]  # what the trainer trains
IdentityMethod = Literal["lora", "dreambooth", "ip-adapter", "lora+ip-adapter"]  # how an identity is built
TINY_MODEL_PARAMETERS = 3_000_000  # UNets below this (the tiny model, 1.4 M) get the tiny model's defaults
SMALL_MODEL_PARAMETERS = 50_000_000  # UNets below this (storybook-mini, 5.8 M) get the ones measured on storybook-mini
MAX_LEARNING_RATE = 0.1  # ten times the tiny model's LoRA rate; real models train at 1e-6..1e-4


class TrainingConfig(BaseModel):
    """Everything that decides the trained weights; saved with each checkpoint and identity. Every number is finite
    and in a range where training can work (a rate above MAX_LEARNING_RATE only makes NaN weights)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: Method
    steps: int = Field(gt=0, le=100_000)
    learning_rate: float = Field(gt=0, le=MAX_LEARNING_RATE)
    rank: int = Field(4, gt=0, le=256)  # LoRA only; alpha = rank, as in diffusers' train_dreambooth_lora.py
    lora_convolutions: bool = False  # LoRA also on the UNet's ResNet convolutions and projections (LoCon)
    batch_size: int = Field(1, gt=0, le=256)
    grad_accum: int = Field(1, gt=0, le=256)
    prior_preservation: bool = True
    prior_loss_weight: float = Field(1.0, ge=0, le=100)
    num_class_images: int = Field(100, ge=0, le=10_000)
    class_image_steps: int = Field(25, gt=0, le=200)
    train_text_encoder: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    snr_gamma: float | None = Field(None, gt=0, le=100)  # 5.0 is kohya's and the Min-SNR paper's choice
    offset_noise: float = Field(0.0, ge=-1, le=1)  # ~0.1 in kohya's sd-scripts
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
        raise TrainingError(f"Invalid training settings ({describe_problems(error)}).") from None


def resumed_config(saved: TrainingConfig, method: Method, overrides: dict | None = None) -> TrainingConfig:
    """The settings a resumed run goes on with: the checkpoint's own, with more `steps` if given.

    A setting given again with the same value is fine; one that differs is refused, by name: the run would no longer
    be the one that was started. Raises TrainingError.
    """
    given = (overrides or {}) | {"method": method}
    try:
        wanted = TrainingConfig.model_validate(saved.model_dump() | given)
    except ValidationError as error:
        raise TrainingError(f"Invalid training settings ({describe_problems(error)}).") from None
    changed = [
        f"{key} {getattr(wanted, key)} (the run has {getattr(saved, key)})"
        for key in given
        if key != "steps" and getattr(wanted, key) != getattr(saved, key)
    ]
    if changed:
        raise TrainingError(
            f"--resume goes on with the settings the run started with, and other settings were given: "
            f"{', '.join(changed)}. Leave them out, or start over with them using --restart."
        )
    return wanted
