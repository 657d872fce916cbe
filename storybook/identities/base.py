"""What every identity method provides to the trainer and the renderer."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from storybook.identities.record import IdentityMetadata
from storybook.identities.training_config import Method, ModelScale, TrainingConfig
from storybook.registry import Character


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need of a base model: parameter counts by part and the sizes derived from its configs."""

    family: str  # 'sd' or 'sdxl'
    native_size: int  # pixels: the side it was trained at
    latent_side: int  # the UNet's latent side at that size
    base_channels: int  # the UNet's first channel width
    unet: int
    text_encoders: tuple[int, ...]
    vae: int
    vae_upcast: bool  # the VAE runs in fp32 whatever the precision (its config's force_upcast)
    token_embeddings: int  # the first text encoder's embedding matrix (Textual Inversion trains it)
    lora_per_rank: int  # a rank-1 LoRA on the UNet's attention projections
    locon_per_rank: int  # ... on its convolutions, projections and feed-forward layers (--lora-convolutions)
    text_lora_per_rank: int  # ... on the text encoders' attention
    hypernetwork: int  # the webui's 1, 2, 1 hypernetwork over the UNet's context widths
    largest_tensor: int  # the UNet's largest weight (what a fused backward pass holds a gradient of)


@dataclass(frozen=True)
class Trainable:
    """What `prepare` set up to train in a pipeline (its trained parameters are those with requires_grad)."""

    text_changes: bool  # the text encoder's output changes as it trains: prompt embeddings cannot be cached
    after_step: Callable[[], None] = field(default=lambda: None)  # run after each optimiser step
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)  # trained modules outside the pipeline's
    # Run between the backward pass and the optimiser step, with the step's number (from 0): a method trained in
    # stages drops the gradients of what does not train yet (the optimiser skips a parameter without one).
    before_update: Callable[[int], None] = field(default=lambda step: None)
    # Parameters that train at another rate than the config's learning_rate (e.g. pivotal tuning's embeddings).
    learning_rates: dict[torch.nn.Parameter, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SaveRequest:
    """Everything a method may write into an identity beside its weights."""

    base_model: str
    base_fingerprint: str
    steps_done: int
    export_kohya: bool  # LoRA: also write kohya's key names for A1111 and ComfyUI
    drawing_dtype: torch.dtype = torch.float32  # what the renderer loads weights in: a whole model is saved in it


@dataclass(frozen=True)
class MethodPart:
    """One identity method: its default settings per model scale, what it trains (`prepare`, called with the
    pipeline's frozen weights' dtype), how it writes its files into an identity folder (`save`, returning their names)
    and how it loads into and leaves a rendering pipeline (`load`, `unload`, `set_strength`, given the adapter
    name)."""

    name: Method
    defaults: dict[ModelScale, dict]
    prepare: Callable[[DiffusionPipeline, Character, TrainingConfig, torch.dtype], Trainable]
    save: Callable[[Path, DiffusionPipeline, Character, TrainingConfig, SaveRequest], list[str]]
    load: Callable[[DiffusionPipeline, Path, IdentityMetadata, str], None]
    unload: Callable[[DiffusionPipeline, IdentityMetadata, str], None]
    # How strongly a loaded identity draws on the next pages (0: not at all), for methods that act on every page
    # they are loaded in; None where the renderer need not switch it (a LoRA is switched with the others at once).
    set_strength: Callable[[DiffusionPipeline, str, float], None] | None = None
    lora_adapter: bool = False  # loads a LoRA adapter named after the character, which the renderer switches per page
    families: frozenset[str] = frozenset({"sd"})  # the model families it trains on ('sd', 'sdxl')
    # For the memory plan (training/vram.py): how many parameters it trains on a model of a shape, and the bytes of
    # the frozen text encoders that stay on the card beside them (given the frozen weights' bytes per value; 0 when
    # they wait on the CPU because the captions' encodings are cached).
    trained_parameters: Callable[[ModelShape, TrainingConfig], int] = lambda shape, config: 0
    resident_text_bytes: Callable[[ModelShape, TrainingConfig, int], int] = lambda shape, config, frozen: 0
    whole_model: bool = False  # trains every UNet weight: its gradients and optimiser state are the model's size


def freeze(module: torch.nn.Module, dtype: torch.dtype | None = None) -> None:
    """Stop `module` from training and, with `dtype`, cast it (frozen weights may run in half precision)."""
    module.requires_grad_(False)
    if dtype is not None and next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
