"""DreamBooth: the whole UNet (and optionally the text encoder) fine-tuned, with prior preservation. Saved in
diffusers' layout; loaded by swapping the weights into the base pipeline, so one such identity per book."""

import json
from pathlib import Path

import torch
import transformers
from diffusers import DiffusionPipeline, UNet2DConditionModel

from storybook.errors import ModelError
from storybook.identities.base import MethodPart, ModelShape, SaveRequest, Trainable, freeze
from storybook.identities.families import text_encoders
from storybook.identities.record import IdentityMetadata
from storybook.identities.training_config import TrainingConfig
from storybook.registry import Character

# Published practice: the HF DreamBooth blog for faces (lr 1e-6..2e-6, 800-1200 steps, 100-200 class images, prior
# weight 1.0), with gradient checkpointing (diffusers' README: full DreamBooth fits 16 GB with it and 8-bit Adam);
# SDXL has no diffusers full-DreamBooth script, so it takes the low end of the blog's rate. storybook-mini, measured
# with the consistency lab: at 2e-4 with 24 class images it drifts as much with the prior as without; 1e-4 with 100
# class images holds the class.
DEFAULTS = {
    "real": {
        "steps": 1000,
        "learning_rate": 2e-6,
        "num_class_images": 200,
        "checkpoint_every": 200,
        "gradient_checkpointing": True,
    },
    "xl": {
        "steps": 1000,
        "learning_rate": 1e-6,
        "num_class_images": 200,
        "checkpoint_every": 200,
        "gradient_checkpointing": True,
    },
    "tiny": {
        "steps": 60,
        "learning_rate": 2e-4,
        "batch_size": 4,
        "num_class_images": 8,
        "class_image_steps": 10,
        "checkpoint_every": 20,
    },
    "mini": {
        "steps": 300,
        "learning_rate": 1e-4,
        "batch_size": 4,
        "num_class_images": 100,
        "class_image_steps": 20,
        "checkpoint_every": 100,
    },
}


def prepare(pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, dtype: torch.dtype) -> Trainable:
    """Train every UNet weight (and the text encoders' with `train_text_encoder`)."""
    for text_encoder in text_encoders(pipeline).values():
        freeze(text_encoder, None if config.train_text_encoder else dtype)
        text_encoder.requires_grad_(config.train_text_encoder)
    pipeline.unet.requires_grad_(True)
    return Trainable(text_changes=config.train_text_encoder)


def save(
    folder: Path, pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, request: SaveRequest
) -> list[str]:
    """Write the fine-tuned UNet (and text encoders) to `folder` in diffusers' layout, in the dtype the renderer
    draws in (an SDXL UNet is 5 GB in fp16, 10 GB in fp32); return the sub-folder names. The modules are cast in
    place: the run is over."""
    trained = {"unet": pipeline.unet} | (text_encoders(pipeline) if config.train_text_encoder else {})
    for name, module in trained.items():
        module.to(request.drawing_dtype).save_pretrained(folder / name, safe_serialization=True)
    return list(trained)


def components(folder: Path, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The fine-tuned UNet (and text encoders) in identity folder `folder`, loaded on the CPU in `dtype`, by the
    pipeline attribute they replace: given to the pipeline's `from_pretrained`, the base ones never load."""
    loaded = {"unet": UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dtype)}
    for name in ("text_encoder", "text_encoder_2"):
        if (folder / name / "config.json").is_file():
            architecture = json.loads((folder / name / "config.json").read_text())["architectures"][0]
            loaded[name] = getattr(transformers, architecture).from_pretrained(folder / name, dtype=dtype)
    return loaded


def load(pipeline: DiffusionPipeline, folder: Path, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Swap the fine-tuned UNet (and text encoders) in `folder` into the pipeline, in its dtype and on its device."""
    dtype, device = pipeline.unet.dtype, pipeline.unet.device
    pipeline.unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=dtype).to(device)
    for name, text_encoder in text_encoders(pipeline).items():
        if (folder / name).is_dir():
            setattr(pipeline, name, type(text_encoder).from_pretrained(folder / name, dtype=dtype).to(device))


def unload(pipeline: DiffusionPipeline, metadata: IdentityMetadata, adapter_name: str) -> None:
    """A swapped-in UNet cannot be taken out: the renderer loads a fresh base for another DreamBooth identity."""
    raise ModelError(f"{metadata.character} is a DreamBooth identity: load a fresh base model instead of unloading it.")


def trained_parameters(shape: ModelShape, config: TrainingConfig) -> int:
    """Every UNet weight, and the text encoders' with `train_text_encoder`."""
    return shape.unet + (sum(shape.text_encoders) if config.train_text_encoder else 0)


PART = MethodPart(
    "dreambooth",
    DEFAULTS,
    prepare,
    save,
    load,
    unload,
    families=frozenset({"sd", "sdxl"}),
    trained_parameters=trained_parameters,
    whole_model=True,
)
