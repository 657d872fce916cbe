"""Pivotal tuning: Textual Inversion and a LoRA trained together, the recipe of diffusers' advanced DreamBooth-LoRA
script and kohya's trainers: the identifier gets embeddings of its own (the "pivot") while the UNet's LoRA learns
the rest. Saved as both methods save (diffusers' and A1111's embedding files beside the LoRA file) and loaded as both
load: the embeddings as new tokens, the LoRA as an adapter switched on the character's pages."""

from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from storybook.registry import Character
from storybook.training.config import TrainingConfig
from storybook.training.identity import IdentityMetadata
from storybook.training.methods import lora, textual_inversion
from storybook.training.methods.base import MethodPart, SaveRequest, Trainable

# The LoRA's defaults with its class images (the diffusers script keeps prior preservation optional); the embeddings
# train at the LoRA's rate, as the script's joint training does.
DEFAULTS = lora.DEFAULTS


def prepare(pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, dtype: torch.dtype) -> Trainable:
    """The LoRA of `lora.prepare`, and the identifier's new embeddings trainable beside it."""
    lora.prepare(pipeline, character, config, dtype)
    restore = textual_inversion.train_identifier_embeddings(pipeline, character, config)
    return Trainable(text_changes=True, after_step=restore)


def save(
    folder: Path, pipeline: DiffusionPipeline, character: Character, config: TrainingConfig, request: SaveRequest
) -> list[str]:
    """Write the embeddings (both formats) and the LoRA (with kohya's names when asked); return the file names."""
    return textual_inversion.save(folder, pipeline, character, config, request) + lora.save(
        folder, pipeline, character, config, request
    )


def load(pipeline: DiffusionPipeline, folder: Path, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Add the identifier's embeddings, then load the LoRA as adapter `adapter_name`."""
    textual_inversion.load(pipeline, folder, metadata, adapter_name)
    lora.load(pipeline, folder, metadata, adapter_name)


def unload(pipeline: DiffusionPipeline, metadata: IdentityMetadata, adapter_name: str) -> None:
    """Take both out of the pipeline again."""
    lora.unload(pipeline, metadata, adapter_name)
    textual_inversion.unload(pipeline, metadata, adapter_name)


PART = MethodPart("pivotal", DEFAULTS, prepare, save, load, unload, lora_adapter=True)
