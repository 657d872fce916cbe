"""Identity-training settings, with defaults from published practice per method, scaled down for tiny models."""

from typing import Literal

from pydantic import BaseModel, Field

Method = Literal["lora", "dreambooth"]
SMALL_MODEL_PARAMETERS = 50_000_000  # UNets below this (the tiny and mini models) get the scaled-down defaults


class TrainingConfig(BaseModel):
    """Everything that decides the trained weights; saved with each checkpoint and identity."""

    method: Method
    steps: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    rank: int = Field(4, gt=0)  # LoRA only; alpha = rank, as in diffusers' train_dreambooth_lora.py
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


def default_config(method: Method, unet_parameters: int) -> TrainingConfig:
    """Published defaults for `method` (LoRA: rank 8, lr 1e-4, 800 steps; DreamBooth on faces: lr 2e-6, 1000 steps,
    prior weight 1.0, 200 class images), or scaled-down ones for UNets under SMALL_MODEL_PARAMETERS."""
    small = unet_parameters < SMALL_MODEL_PARAMETERS
    if method == "lora":
        if small:
            return TrainingConfig(
                method=method,
                steps=60,
                learning_rate=5e-3,
                rank=4,
                batch_size=4,
                num_class_images=8,
                class_image_steps=10,
                checkpoint_every=20,
            )
        return TrainingConfig(
            method=method, steps=800, learning_rate=1e-4, rank=8, num_class_images=100, checkpoint_every=100
        )
    if small:
        return TrainingConfig(
            method=method,
            steps=60,
            learning_rate=2e-4,
            batch_size=4,
            num_class_images=8,
            class_image_steps=10,
            checkpoint_every=20,
        )
    return TrainingConfig(method=method, steps=1000, learning_rate=2e-6, num_class_images=200, checkpoint_every=200)
