"""Identity-training settings: what decides the trained weights, checked. Each method's defaults per model scale live
in its part (storybook/identities/)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from storybook.errors import TrainingError, describe_problems

Method = Literal["lora", "dreambooth", "textual-inversion", "hypernetwork", "pivotal"]  # what the trainer trains
IdentityMethod = Literal[  # how an identity is built: a trained method, an image prompt, or both
    "lora",
    "dreambooth",
    "textual-inversion",
    "hypernetwork",
    "pivotal",
    "ip-adapter",
    "lora+ip-adapter",
    "pivotal+ip-adapter",
]
MixedPrecision = Literal["no", "fp16", "bf16"]
# adamw-8bit: bitsandbytes' AdamW8bit (the `gpu` extra); adafactor: storybook.training.optimizers.Adafactor
Optimizer = Literal["adamw", "adamw-8bit", "adafactor"]
ModelScale = Literal["tiny", "mini", "real", "xl"]  # which defaults a base model gets, by its UNet's size and family
TINY_MODEL_PARAMETERS = 3_000_000  # UNets below this (the tiny model, 1.4 M) get the tiny model's defaults
SMALL_MODEL_PARAMETERS = 50_000_000  # UNets below this (storybook-mini, 5.8 M) get the ones measured on storybook-mini
MAX_LEARNING_RATE = 0.1  # ten times the tiny model's LoRA rate; real models train at 1e-6..1e-4


class TrainingConfig(BaseModel):
    """Everything that decides the trained weights; saved with each checkpoint and identity. Every number is finite
    and in a range where training can work (a rate above MAX_LEARNING_RATE only makes NaN weights)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: Method
    steps: int = Field(gt=0, le=100_000, description="Optimiser steps.")
    learning_rate: float = Field(gt=0, le=MAX_LEARNING_RATE, description="Learning rate.")
    rank: int = Field(
        4, gt=0, le=256, description="LoRA rank."
    )  # LoRA only; alpha = rank, as in diffusers' train_dreambooth_lora.py
    # LoRA also on the UNet's ResNet convolutions and projections (LoCon)
    lora_convolutions: bool = Field(False, description="LoRA on the UNet's convolutions too.")
    # Textual Inversion and pivotal tuning: new token embeddings learned for the identifier
    num_vectors: int = Field(
        1, ge=1, le=4, description="Textual Inversion: embedding vectors learned for the identifier (1-4)."
    )
    # The photos' caption: "a photo of zorv toddler", or the class noun alone as the hypernetwork paper trained
    # ("a photo of toddler": the identity then changes every toddler drawn).
    captions: Literal["identifier", "class"] = Field(
        "identifier",
        description="identifier ('a photo of zorv toddler', default) or class ('a photo of toddler', as the "
        "hypernetwork paper trained: the identity then changes every toddler drawn).",
    )
    # Each photo's own caption after that ("a photo of toddler, a little girl waving"), as the webui's [filewords]
    # templates train; photos without one train on the bare caption. Set by BLIP or the parent (storybook.captions).
    photo_captions: bool = Field(
        False,
        description="Train each photo under its own caption too (`storybook character caption`; default: on for the "
        "hypernetwork, as the webui's [filewords]).",
    )
    # Pivotal tuning: the identifier's embeddings alone for the first `embedding_steps` (AttnDreamBooth's order),
    # then with the LoRA; 0 trains them together from the start (diffusers' advanced script). Their rate: the
    # `embedding_learning_rate`, or `learning_rate` when None.
    embedding_steps: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Pivotal tuning: train the identifier's embeddings alone for this many steps first "
        "(AttnDreamBooth's order), then with the LoRA (default 0: together).",
    )
    embedding_learning_rate: float | None = Field(
        None, gt=0, le=MAX_LEARNING_RATE, description="Pivotal tuning: the embeddings' learning rate (default: --lr)."
    )
    batch_size: int = Field(1, gt=0, le=256)
    grad_accum: int = Field(1, gt=0, le=256, description="Gradient accumulation steps.")
    prior_preservation: bool = True
    prior_loss_weight: float = Field(1.0, ge=0, le=100)
    num_class_images: int = Field(100, ge=0, le=10_000)
    class_image_steps: int = Field(25, gt=0, le=200)
    train_text_encoder: bool = False
    mixed_precision: MixedPrecision = Field(
        "no", description="no, fp16 or bf16 (GPU only; default there bf16 where supported, else fp16)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations to save memory (default: on for full DreamBooth on real models)."
    )
    optimizer: Optimizer = Field(
        "adamw",
        description="adamw, adamw-8bit (bitsandbytes; default on CUDA when it is installed) or adafactor (factored "
        "moments, almost no state).",
    )
    # Full fine-tunes only: each parameter updated as soon as its gradient is ready, inside the backward pass, so the
    # model's gradients are never held at once (kohya's --fused_backward_pass; Adafactor, no accumulation, no fp16).
    fused_backward: bool = Field(
        False,
        description="DreamBooth with adafactor: update each weight inside the backward pass (no model-sized "
        "gradients).",
    )
    # Full fine-tunes only: the trained weights themselves in bf16, updated by Adafactor with stochastic rounding
    # (kohya's --full_bf16): half the memory of fp32 weights, for SDXL DreamBooth on a 16-24 GB card.
    full_bf16: bool = Field(
        False, description="DreamBooth with adafactor and bf16: the trained weights in bf16, stochastically rounded."
    )
    snr_gamma: float | None = Field(
        None, gt=0, le=100, description="Min-SNR weighting gamma (5 is common)."
    )  # 5.0 is kohya's and the Min-SNR paper's choice
    offset_noise: float = Field(
        0.0, ge=-1, le=1, description="Offset-noise strength (~0.1)."
    )  # ~0.1 in kohya's sd-scripts
    seed: int = 0
    checkpoint_every: int = Field(100, gt=0, description="Save a checkpoint every N steps.")
    cache_latents: bool = True

    @model_validator(mode="after")
    def identifier_in_captions(self) -> "TrainingConfig":
        """Methods that learn the identifier's own embedding need it in the captions (else they learn nothing)."""
        if self.captions == "class" and self.method in ("textual-inversion", "pivotal"):
            raise ValueError(f"{self.method} learns the identifier's embedding, so its captions must name it")
        if self.method != "pivotal" and (self.embedding_steps or self.embedding_learning_rate):
            raise ValueError("embedding_steps and embedding_learning_rate are settings of pivotal tuning only")
        if (self.fused_backward or self.full_bf16) and self.method != "dreambooth":
            raise ValueError("fused_backward and full_bf16 are settings of full fine-tunes (dreambooth) only")
        if self.fused_backward and (self.optimizer != "adafactor" or self.grad_accum != 1):
            raise ValueError("fused_backward needs optimizer adafactor and grad_accum 1 (it updates during backward)")
        if self.fused_backward and self.mixed_precision == "fp16":
            raise ValueError("fused_backward cannot use fp16's loss scaler: train with mixed_precision bf16 or no")
        if self.full_bf16 and (self.optimizer != "adafactor" or self.mixed_precision != "bf16"):
            raise ValueError("full_bf16 needs optimizer adafactor (stochastic rounding) and mixed_precision bf16")
        if self.embedding_steps >= self.steps:
            raise ValueError(f"embedding_steps ({self.embedding_steps}) must leave steps for the LoRA ({self.steps})")
        return self


def model_scale(unet_parameters: int, family: str = "sd") -> ModelScale:
    """Which defaults a UNet of `unet_parameters` in model `family` ('sd', 'sdxl') gets: the tiny model's (whatever
    its family), storybook-mini's, real SD models' or real SDXL models'."""
    if unet_parameters < TINY_MODEL_PARAMETERS:
        return "tiny"
    if family == "sdxl":
        return "xl"
    if unet_parameters < SMALL_MODEL_PARAMETERS:
        return "mini"
    return "real"


def checked_config(settings: dict) -> TrainingConfig:
    """`settings` as a TrainingConfig. Raises TrainingError naming the bad setting (e.g. steps=0)."""
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
    wanted = checked_config(saved.model_dump() | given)
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
